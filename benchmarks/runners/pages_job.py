"""Runner 9: the main job, the example project's ``pages`` spider writing every page.

What ``scrapy crawl pages -a urls=FILE`` runs, with the project's own settings (add-on, page
writer, robots.txt), in-process so it is measured exactly like runners 4-7: from
``spider_opened`` to ``spider_closed`` by the same probe, the URL file written beforehand
and the pages into a fresh temporary directory. Only the concurrency caps (C for all and per
domain) and the log level differ from the project, as they do for the minimal spider.
A page counts when the page writer has stored it (the ``item_scraped`` signal).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from benchmarks.runners.common import RunnerArgs, RunResult, page_urls, parse_args
from benchmarks.runners.scrapy_crawl import Probe, finish
from benchmarks.runners.scrapy_settings import stock_settings

EXAMPLE_PROJECT = Path(__file__).resolve().parents[2] / "example_project"


def write_url_file(path: Path, base_url: str, pages: int) -> None:
    """The benchmark's URL list (``page_urls``) as a file for ``-a urls=FILE``."""
    with path.open("w", encoding="utf-8") as file:
        file.writelines(url + "\n" for url in page_urls(base_url, pages))


def run(args: RunnerArgs, workdir: Path) -> RunResult:
    from scrapy import signals  # noqa: PLC0415
    from scrapy.crawler import AsyncCrawlerProcess  # noqa: PLC0415
    from scrapy.utils.project import get_project_settings  # noqa: PLC0415

    urls = workdir / "urls.txt"
    write_url_file(urls, args.base_url, args.pages)
    sys.path.insert(0, str(EXAMPLE_PROJECT))
    os.environ["SCRAPY_SETTINGS_MODULE"] = "pages_project.settings"
    settings = get_project_settings()
    settings.setdict(
        {**stock_settings(args.concurrency), "ASYNCFETCH_PAGES_DIR": str(workdir / "pages")},
        priority="cmdline",
    )
    process = AsyncCrawlerProcess(settings)
    probe = Probe(args.pages)
    crawler = process.create_crawler("pages")
    probe.connect(crawler)
    crawler.signals.connect(probe.page, signals.item_scraped)
    process.crawl(crawler, urls=str(urls))
    return finish(process, crawler, probe, args, "9-pages-job", variant="pages-job")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory(prefix="asyncfetch-bench-pages-") as workdir:
        run(args, Path(workdir)).emit()


if __name__ == "__main__":
    main()
