"""The middleware under every way of running Scrapy, each in a fresh process:
the aiohttp session must be created inside the running loop and closed before
it stops, whoever starts the loop."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.mockserver import MockServer

REPO = Path(__file__).resolve().parent.parent

SPIDER = """
import json, sys
import scrapy

class Pages(scrapy.Spider):
    name = "pages"

    async def start(self):
        for i in range(10):
            yield scrapy.Request(f"{URL}/page/{i}")

    async def parse(self, response):
        yield {"url": response.url}

SETTINGS = {
    "ADDONS": {"scrapy_asyncfetch.Addon": 300},
    "LOG_LEVEL": "INFO",
    "TELNETCONSOLE_ENABLED": False,
}

def report(crawler):
    stats = crawler.stats.get_stats()
    print("RESULT " + json.dumps({
        "responses": stats.get("asyncfetch/responses"),
        "items": stats.get("item_scraped_count"),
        "finish_reason": stats.get("finish_reason"),
    }), flush=True)
"""

RUNNERS = {
    "CrawlerProcess": """
from scrapy.crawler import CrawlerProcess
process = CrawlerProcess(SETTINGS)
crawler = process.create_crawler(Pages)
process.crawl(crawler)
process.start()
report(crawler)
""",
    "AsyncCrawlerProcess": """
from scrapy.crawler import AsyncCrawlerProcess
process = AsyncCrawlerProcess(SETTINGS)
crawler = process.create_crawler(Pages)
process.crawl(crawler)
process.start()
report(crawler)
""",
    "CrawlerRunner": """
from scrapy.crawler import CrawlerRunner
from scrapy.utils.log import configure_logging
from scrapy.utils.reactor import install_reactor
install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
from twisted.internet import reactor
configure_logging()
runner = CrawlerRunner(SETTINGS)
crawler = runner.create_crawler(Pages)
d = runner.crawl(crawler)
d.addBoth(lambda _: reactor.stop())
reactor.run()
report(crawler)
""",
    "AsyncCrawlerRunner": """
import asyncio
from scrapy.crawler import AsyncCrawlerRunner
from scrapy.utils.log import configure_logging
from scrapy.utils.reactor import install_reactor
install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
from twisted.internet import reactor
from twisted.internet.defer import Deferred
configure_logging()
runner = AsyncCrawlerRunner(SETTINGS)
crawler = runner.create_crawler(Pages)
d = Deferred.fromFuture(asyncio.ensure_future(runner.crawl(crawler)))
d.addBoth(lambda _: reactor.stop())
reactor.run()
report(crawler)
""",
    "no reactor (TWISTED_REACTOR_ENABLED=False)": """
from scrapy.crawler import AsyncCrawlerProcess
process = AsyncCrawlerProcess({**SETTINGS, "TWISTED_REACTOR_ENABLED": False})
crawler = process.create_crawler(Pages)
process.crawl(crawler)
process.start()
report(crawler)
""",
}


def run_script(code: str, cwd: Path) -> tuple[dict[str, object], str]:
    script = cwd / "run_crawl.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, "-W", "error::scrapy.exceptions.ScrapyDeprecationWarning", str(script)],
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = done.stdout + done.stderr
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0, log
    assert results, log
    return json.loads(results[-1].removeprefix("RESULT ")), log


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_runs_under(runner: str, mockserver: MockServer, tmp_path: Path) -> None:
    code = SPIDER.replace("{URL}", mockserver.url("")) + textwrap.dedent(RUNNERS[runner])
    result, log = run_script(code, tmp_path)
    assert result == {"responses": 10, "items": 10, "finish_reason": "finished"}, log
    for bad in ("Unclosed", "no running event loop", "Traceback", "ScrapyDeprecationWarning"):
        assert bad not in log, log


def test_scrapy_runspider_command(mockserver: MockServer, tmp_path: Path) -> None:
    spider = tmp_path / "pages.py"
    spider.write_text(SPIDER.replace("{URL}", mockserver.url("")))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scrapy",
            "runspider",
            str(spider),
            "-s",
            'ADDONS={"scrapy_asyncfetch.Addon": 300}',
            "-o",
            str(tmp_path / "items.jsonl"),
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "'asyncfetch/responses': 10" in log
    assert len((tmp_path / "items.jsonl").read_text().splitlines()) == 10
    assert "Unclosed" not in log
