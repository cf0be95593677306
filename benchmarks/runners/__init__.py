"""The seven runners: each fetches the same URL list in its own subprocess.

This module is only a registry (no heavy imports) so the orchestrator can list runners
without importing Scrapy, aiohttp or requests itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerSpec:
    key: str  # "1".."7", as used on the command line (--runners 3,4,7)
    name: str  # stable identifier in results
    label: str  # human-readable, for tables and charts
    module: str  # run as `python -m module *args`
    args: tuple[str, ...] = ()
    needs_addon: bool = False  # cannot run until scrapy_asyncfetch.Addon imports
    fixed_concurrency: int | None = None  # the sync loop is always C=1


_SCRAPY = "benchmarks.runners.scrapy_crawl"

RUNNERS: dict[str, RunnerSpec] = {
    spec.key: spec
    for spec in (
        RunnerSpec(
            "1",
            "1-sync",
            "1 sync requests",
            "benchmarks.runners.sync_requests",
            fixed_concurrency=1,
        ),
        RunnerSpec("2", "2-threads", "2 threads+requests", "benchmarks.runners.threaded_requests"),
        RunnerSpec("3", "3-aiohttp", "3 asyncio+aiohttp", "benchmarks.runners.aiohttp_gather"),
        RunnerSpec("4", "4-scrapy", "4 Scrapy stock", _SCRAPY, ("--variant", "stock")),
        RunnerSpec(
            "5",
            "5-scrapy-tuned",
            "5 Scrapy + add-on tuning",
            _SCRAPY,
            ("--variant", "tuned"),
            needs_addon=True,
        ),
        RunnerSpec(
            "6",
            "6-scrapy-aiohttp-handler",
            "6 Scrapy aiohttp handler",
            _SCRAPY,
            ("--variant", "aiohttp-handler"),
            needs_addon=True,
        ),
        RunnerSpec(
            "7",
            "7-asyncfetch",
            "7 scrapy-asyncfetch",
            _SCRAPY,
            ("--variant", "addon"),
            needs_addon=True,
        ),
    )
}
