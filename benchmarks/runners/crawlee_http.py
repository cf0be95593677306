"""Runner 8: crawlee-python's ``HttpCrawler``, what a user might pick instead of Scrapy.

Its default HTTP client (impit), in-memory storage (``MemoryStorageClient``: nothing is
written to disk), and concurrency pinned to C: ``ConcurrencySettings`` with min = max =
desired = C. The autoscaled pool never runs fewer than ``min_concurrency`` tasks, even when
its snapshotter calls the system overloaded, so autoscaling cannot take it below C. Retries,
sessions and timeouts keep crawlee's defaults (``max_request_retries=3``; Scrapy retries
twice), which only matters with ``--error-rate``. The request handler only counts.

Measured like runner 3, inside the running loop: from just before ``crawler.run(urls)`` to
its return. That window includes adding the URLs to the in-memory queue and the crawler's
own start-up and shutdown (event manager, snapshotter, statistics), much as Scrapy's
``spider_opened``..``spider_closed`` includes consuming ``start()``; building the crawler
and imports are not counted. The URL list is a Python list, as ``run()`` wants a sequence.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from benchmarks.runners.common import RunnerArgs, RunResult, page_urls, parse_args
from benchmarks.runners.scrapy_crawl import Probe


async def crawl(args: RunnerArgs, probe: Probe) -> dict[str, Any]:
    """Run the crawl (the probe measures it) and return crawlee's final statistics."""
    from crawlee import ConcurrencySettings, service_locator  # noqa: PLC0415 - fast `--help`
    from crawlee.configuration import Configuration  # noqa: PLC0415
    from crawlee.crawlers import HttpCrawler, HttpCrawlingContext  # noqa: PLC0415
    from crawlee.storage_clients import MemoryStorageClient  # noqa: PLC0415

    # Set globally, not per crawler: crawlee warns when a crawler gets a configuration but
    # builds its event manager from the global one.
    service_locator.set_configuration(Configuration(purge_on_start=True))
    service_locator.set_storage_client(MemoryStorageClient())
    crawler = HttpCrawler(
        concurrency_settings=ConcurrencySettings(
            min_concurrency=args.concurrency,
            max_concurrency=args.concurrency,
            desired_concurrency=args.concurrency,
        ),
        configure_logging=False,
    )

    @crawler.router.default_handler
    async def count(context: HttpCrawlingContext) -> None:
        probe.page()

    urls = list(page_urls(args.base_url, args.pages))
    probe.on_opened()
    final = await crawler.run(urls)
    probe.on_closed()
    return final.to_dict()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # Quiet, as Scrapy's INFO log is: crawlee's periodic statistics tables are INFO.
    logging.basicConfig(level=logging.WARNING)
    probe = Probe(args.pages)
    stats = asyncio.run(crawl(args, probe))
    start, end = probe.window["start"], probe.window["end"]
    RunResult.between(
        "8-crawlee",
        args,
        start,
        end,
        pages_ok=probe.ok,
        errors=args.pages - probe.ok,
        rss_start_mb=probe.rss_start,
        extra={
            "crawlee": stats,
            # crawlee's own runtime figure, for comparison with the measured window.
            "crawler_runtime_s": stats.get("crawler_runtime"),
            "timeline": probe.timeline,
        },
    ).emit()


if __name__ == "__main__":
    main()
