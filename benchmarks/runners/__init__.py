"""The runners: each fetches the same URL list in its own subprocess.

This module is only a registry (no heavy imports) so the orchestrator can list runners
without importing Scrapy, aiohttp or requests itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunnerSpec:
    key: str  # "1".."9", as used on the command line (--runners 3,4,7)
    name: str  # stable identifier in results
    label: str  # human-readable, for tables and charts
    module: str  # run as `python -m module *args`
    args: tuple[str, ...] = ()
    # An import statement that must succeed in a runner's environment, else the runner is
    # skipped (the add-on while it does not import; crawlee, which only the bench extra has).
    requires: str | None = None
    fixed_concurrency: int | None = None  # the sync loop is always C=1


_SCRAPY = "benchmarks.runners.scrapy_crawl"
_ADDON = "from scrapy_asyncfetch import Addon"

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
            requires=_ADDON,
        ),
        RunnerSpec(
            "6",
            "6-scrapy-aiohttp-handler",
            "6 Scrapy aiohttp handler",
            _SCRAPY,
            ("--variant", "aiohttp-handler"),
            requires=_ADDON,
        ),
        RunnerSpec(
            "7",
            "7-asyncfetch",
            "7 scrapy-asyncfetch",
            _SCRAPY,
            ("--variant", "addon"),
            requires=_ADDON,
        ),
        RunnerSpec(
            "8",
            "8-crawlee",
            "8 crawlee HttpCrawler",
            "benchmarks.runners.crawlee_http",
            requires="import crawlee",
        ),
        RunnerSpec(
            "9",
            "9-pages-job",
            "9 pages job (page writer)",
            "benchmarks.runners.pages_job",
            requires=_ADDON,
        ),
    )
}
