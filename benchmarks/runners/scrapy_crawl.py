"""Runners 4-7: one Scrapy crawl of the URL list, in the variant given by ``--variant``.

The spider is minimal: ``async def start()`` yields one Request per URL and the callback
only counts. The fetching part is measured from ``spider_opened`` to ``spider_closed``: wall
time is Scrapy's own ``elapsed_time_seconds`` stat and CPU time is ``getrusage`` taken in
those two signal handlers, so interpreter start-up, imports and reactor installation are
excluded, as they are for the other runners.

The result's ``extra["timeline"]`` says when, in seconds after ``spider_opened``, ``start()``
was exhausted and the 1st, 10%, 50%, 90% and last page reached the callback (a few
timestamps, so neither CPU nor memory figures move); ``benchmarks.timeline`` tabulates them.

All variants run under ``AsyncCrawlerProcess``, which starts the asyncio loop (through the
asyncio Twisted reactor, Scrapy's default) before ``Crawler.crawl_async()`` runs. Scrapy's
experimental ``AiohttpDownloadHandler`` needs that: it is not lazy and builds its
``aiohttp.ClientSession`` in ``__init__``, which under the classic ``CrawlerProcess``
happens before the reactor runs and fails with "no running event loop".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from benchmarks.runners.common import (
    RunnerArgs,
    RunResult,
    Snapshot,
    current_rss_mb,
    page_urls,
    parse_args,
)
from benchmarks.runners.scrapy_settings import VARIANTS, variant_settings


def timeline_marks(pages: int) -> dict[str, int]:
    """The page counts whose arrival at the callback the timeline records."""
    return {
        "first": 1,
        "p10": max(1, pages // 10),
        "p50": max(1, pages // 2),
        "p90": max(1, pages * 9 // 10),
        "last": pages,
    }


RUNNER_NAMES = {
    "stock": "4-scrapy",
    "tuned": "5-scrapy-tuned",
    "aiohttp-handler": "6-scrapy-aiohttp-handler",
    "addon": "7-asyncfetch",
}


def _split_variant(argv: list[str]) -> tuple[str, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    known, rest = parser.parse_known_args(argv)
    return known.variant, rest


class Probe:
    """Measures one crawl from ``spider_opened`` to ``spider_closed`` and times its pages.

    Connected to the crawler's signals, not written into a spider, so the minimal spider and
    the example project's ``pages`` spider are measured by the same code.
    """

    def __init__(self, pages: int) -> None:
        self.ok = 0
        self.window: dict[str, Snapshot] = {}
        self.rss_start = float("nan")
        self.timeline: dict[str, float] = {}
        #: page count -> the timeline names it marks
        self.marks: dict[int, list[str]] = {}
        for name, count in timeline_marks(pages).items():
            self.marks.setdefault(count, []).append(name)

    def connect(self, crawler: Any) -> None:
        from scrapy import signals  # noqa: PLC0415

        crawler.signals.connect(self.on_opened, signals.spider_opened)
        crawler.signals.connect(self.on_closed, signals.spider_closed)

    def on_opened(self) -> None:
        self.rss_start = current_rss_mb()
        self.window["start"] = Snapshot.take()

    def on_closed(self) -> None:
        self.window["end"] = Snapshot.take()

    def mark(self, name: str) -> None:
        self.timeline[name] = time.perf_counter() - self.window["start"].wall

    def page(self, *_: Any, **__: Any) -> None:
        self.ok += 1
        for name in self.marks.get(self.ok, ()):
            self.mark(name)


def bench_spider(args: RunnerArgs, probe: Probe) -> type:
    """The minimal spider: ``start()`` yields the URLs, the callback only counts."""
    from scrapy import Request, Spider  # noqa: PLC0415

    class BenchSpider(Spider):
        name = "bench"
        failed = 0

        async def start(self) -> AsyncIterator[Request]:
            for url in page_urls(args.base_url, args.pages):
                yield Request(url, callback=self.parse, errback=self.on_error)
            probe.mark("start_done")

        def parse(self, response: Any) -> None:
            probe.page()

        def on_error(self, failure: Any) -> None:
            self.failed += 1

    return BenchSpider


def run(variant: str, args: RunnerArgs) -> RunResult:
    # Scrapy is imported here, not at module level, so `--help` stays fast.
    from scrapy.crawler import AsyncCrawlerProcess  # noqa: PLC0415

    probe = Probe(args.pages)
    settings, meta = variant_settings(variant, args.concurrency)
    process = AsyncCrawlerProcess(settings)
    crawler = process.create_crawler(bench_spider(args, probe))
    probe.connect(crawler)
    process.crawl(crawler)
    return finish(process, crawler, probe, args, RUNNER_NAMES[variant], variant=variant, **meta)


def finish(
    process: Any, crawler: Any, probe: Probe, args: RunnerArgs, runner: str, **extra: Any
) -> RunResult:
    """Run the crawl to its end and build its result from the probe and Scrapy's stats."""
    process_start = time.perf_counter()
    process.start()
    process_wall = time.perf_counter() - process_start

    stats = crawler.stats.get_stats() if crawler.stats else {}
    if "end" not in probe.window:
        raise RuntimeError(f"crawl did not run to spider_closed; stats: {stats}")
    start, end = probe.window["start"], probe.window["end"]
    wall = float(stats.get("elapsed_time_seconds", end.wall - start.wall))
    extra = {
        **extra,
        "response_received_count": stats.get("response_received_count", 0),
        "request_count": stats.get("downloader/request_count", 0),
        "retry_count": stats.get("retry/count", 0),
        "errback_count": getattr(crawler.spider, "failed", 0),
        "finish_reason": stats.get("finish_reason"),
        "signal_window_s": end.wall - start.wall,
        "process_start_s": process_wall,
        "timeline": probe.timeline,
    }
    return RunResult.between(
        runner,
        args,
        start,
        end,
        pages_ok=probe.ok,
        # Anything not delivered to the callback is an error, whatever dropped it.
        errors=args.pages - probe.ok,
        rss_start_mb=probe.rss_start,
        wall_s=wall,
        extra=extra,
    )


def main() -> None:
    variant, rest = _split_variant(sys.argv[1:])
    args = parse_args(__doc__.splitlines()[0], rest)
    run(variant, args).emit()


if __name__ == "__main__":
    main()
