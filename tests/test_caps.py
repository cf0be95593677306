"""Caps and politeness, measured by the server: what it saw in flight, and when."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from typing import Any

import pytest
from scrapy import Request
from scrapy.exceptions import CloseSpider, DownloadCancelledError
from scrapy.http import Response

from scrapy_asyncfetch import CancelledAtCloseError
from tests.conftest import asyncio_test, crawl, wait_until
from tests.mockserver import MockServer
from tests.spiders import Collector

#: Starts are measured at the server, on arrival: setting up a new connection
#: can delay one arrival, and so shorten the next gap, by this much under load.
CONNECT_SLACK = 0.05


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(starts)]


async def run(mockserver: MockServer, urls: list[str], **settings: Any) -> Collector:
    crawler = await crawl(Collector, settings, requests=urls)
    spider = crawler.spider
    assert isinstance(spider, Collector)
    assert len(spider.responses) == len(urls), spider.failures
    return spider


@asyncio_test
async def test_scrapy_per_domain_cap_is_honoured(mockserver: MockServer) -> None:
    urls = [mockserver.url("/delay/0.2", host=h) for h in (1, 2) for _ in range(8)]
    await run(mockserver, urls, CONCURRENT_REQUESTS=16, CONCURRENT_REQUESTS_PER_DOMAIN=3)
    for host in (1, 2):
        assert mockserver.host_stats(host)["max_inflight"] == 3


@asyncio_test
async def test_asyncfetch_per_domain_cap_overrides(mockserver: MockServer) -> None:
    urls = [mockserver.url("/delay/0.2") for _ in range(8)]
    await run(
        mockserver,
        urls,
        CONCURRENT_REQUESTS_PER_DOMAIN=8,
        ASYNCFETCH_CONCURRENT_REQUESTS_PER_DOMAIN=2,
    )
    assert mockserver.host_stats(1)["max_inflight"] == 2


@asyncio_test
async def test_global_cap_is_honoured(mockserver: MockServer) -> None:
    # One host, so the server's per-host count is the global count.
    urls = [mockserver.url("/delay/0.2") for _ in range(12)]
    spider = await run(
        mockserver,
        urls,
        CONCURRENT_REQUESTS=16,
        CONCURRENT_REQUESTS_PER_DOMAIN=16,
        ASYNCFETCH_CONCURRENT_REQUESTS=4,
    )
    assert mockserver.host_stats(1)["max_inflight"] == 4
    assert spider.crawler.stats.get_value("asyncfetch/peak_in_flight") == 4


@asyncio_test
async def test_download_slots_setting_is_honoured(mockserver: MockServer) -> None:
    urls = [mockserver.url("/delay/0.1", host=h) for h in (1, 2) for _ in range(6)]
    await run(
        mockserver,
        urls,
        CONCURRENT_REQUESTS_PER_DOMAIN=4,
        DOWNLOAD_SLOTS={"127.0.0.2": {"concurrency": 1}},
    )
    assert mockserver.host_stats(1)["max_inflight"] == 4
    assert mockserver.host_stats(2)["max_inflight"] == 1


@asyncio_test
async def test_download_slot_meta_groups_hosts(mockserver: MockServer) -> None:
    urls = [
        Request(mockserver.url("/delay/0.1", host=h), meta={"download_slot": "shared"})
        for h in (1, 2)
        for _ in range(4)
    ]
    crawler = await crawl(
        Collector,
        {"DOWNLOAD_DELAY": 0.15, "DOWNLOAD_DELAY_JITTER": 0},
        requests=urls,
    )
    starts = sorted(mockserver.host_stats(1)["starts"] + mockserver.host_stats(2)["starts"])
    assert len(starts) == 8
    # One slot for both hosts: one delay between all starts. (The server sees
    # arrivals: a new connection's set-up may shorten a gap a little.)
    assert min(gaps(starts)) >= 0.15 - CONNECT_SLACK
    assert crawler.stats.get_value("asyncfetch/responses") == 8


@pytest.mark.parametrize(
    "settings",
    [
        {"DOWNLOAD_DELAY": 0.2, "DOWNLOAD_DELAY_JITTER": 0},
        {"ASYNCFETCH_DOWNLOAD_DELAY": 0.2, "DOWNLOAD_DELAY_JITTER": 0},
        {"DOWNLOAD_DELAY": 0.2},  # Scrapy's default ±50% jitter
    ],
)
@asyncio_test
async def test_per_domain_delay_holds(mockserver: MockServer, settings: dict[str, Any]) -> None:
    urls = [mockserver.url("/echo", host=h) for h in (1, 2) for _ in range(5)]
    await run(mockserver, urls, CONCURRENT_REQUESTS_PER_DOMAIN=8, **settings)
    floor = 0.2 * (1 - (0 if "DOWNLOAD_DELAY_JITTER" in settings else 0.5))
    host_starts = [mockserver.host_stats(h)["starts"] for h in (1, 2)]
    for starts in host_starts:
        assert min(gaps(starts)) >= floor - CONNECT_SLACK
    # Hosts do not wait for each other: their first requests start together.
    assert abs(host_starts[0][0] - host_starts[1][0]) < 0.1


@asyncio_test
async def test_autothrottle_delay_is_honoured(mockserver: MockServer) -> None:
    # The server answers in 0.4 s; with a target concurrency of 1 AutoThrottle
    # raises the slot delay from its 0.15 s start to 0.4 s at the first answer.
    # The request waiting then (the 4th, due at 0.45 s) waits the new delay, as
    # with Scrapy's own slots, which re-read the delay when their timer fires.
    urls = [mockserver.url("/delay/0.4") for _ in range(7)]
    await run(
        mockserver,
        urls,
        AUTOTHROTTLE_ENABLED=True,
        AUTOTHROTTLE_START_DELAY=0.15,
        AUTOTHROTTLE_TARGET_CONCURRENCY=1.0,
        DOWNLOAD_DELAY_JITTER=0,
        CONCURRENT_REQUESTS_PER_DOMAIN=8,
    )
    all_gaps = gaps(mockserver.host_stats(1)["starts"])
    assert min(all_gaps[:2]) >= 0.15 - CONNECT_SLACK
    assert max(all_gaps[:2]) < 0.3
    assert min(all_gaps[2:]) >= 0.4 - CONNECT_SLACK


@asyncio_test
async def test_downloader_slots_see_requests_waiting_in_the_middleware(
    mockserver: MockServer,
) -> None:
    """DownloaderAwarePriorityQueue, AutoThrottle and the slot GC read Scrapy's
    slots; a request waiting on the middleware's cap must count there."""
    seen: dict[str, int] = {}

    class Watching(Collector):
        async def start(self) -> Any:
            watcher = asyncio.ensure_future(self.watch())
            async for request in super().start():
                yield request
            await watcher

        async def watch(self) -> None:
            async def two_at_server() -> bool:
                return (await mockserver.host_stats_async(1))["inflight"] >= 2

            await wait_until(two_at_server)
            downloader = self.crawler.engine.downloader
            # The other six are queued on the cap by now or soon: wait for them.
            await wait_until(
                lambda: (
                    "127.0.0.1" in downloader.slots
                    and len(downloader.slots["127.0.0.1"].active) == 8
                )
            )
            slot = downloader.slots["127.0.0.1"]
            seen.update(active=len(slot.active), transferring=len(slot.transferring))

    await crawl(
        Watching,
        {"CONCURRENT_REQUESTS": 8, "CONCURRENT_REQUESTS_PER_DOMAIN": 2},
        requests=[mockserver.url("/delay/0.5") for _ in range(8)],
    )
    assert seen == {"active": 8, "transferring": 2}
    assert mockserver.host_stats(1)["max_inflight"] == 2


@asyncio_test
async def test_downloader_aware_queue_keeps_fast_hosts_going(mockserver: MockServer) -> None:
    """One slow host queued first must not hold the global places while fast
    hosts wait: DownloaderAwarePriorityQueue steers away from its busy slot."""
    fast_hosts = (2, 3, 4)
    per_host = 20

    class Broad(Collector):
        started = 0.0
        fast_done: float | None = None

        async def parse(self, response: Response) -> Any:
            self.responses.append(response)
            fast = [r for r in self.responses if "/delay/0.02" in r.url]
            if self.fast_done is None and len(fast) == per_host * len(fast_hosts):
                self.fast_done = time.monotonic() - self.started
                raise CloseSpider("fast hosts done")
            for _ in ():
                yield

    urls = [mockserver.url("/delay/1", host=1) for _ in range(per_host)]
    urls += [mockserver.url("/delay/0.02", host=h) for h in fast_hosts for _ in range(per_host)]
    Broad.started = time.monotonic()
    crawler = await crawl(
        Broad,
        {
            "SCHEDULER_PRIORITY_QUEUE": "scrapy.pqueues.DownloaderAwarePriorityQueue",
            "CONCURRENT_REQUESTS": 8,
            "CONCURRENT_REQUESTS_PER_DOMAIN": 2,
            "ASYNCFETCH_SHUTDOWN_TIMEOUT": 0,
        },
        requests=urls,
    )
    spider = crawler.spider
    assert isinstance(spider, Broad)
    assert spider.fast_done is not None
    # The first 8 requests are all for the slow host (the scheduler knows no
    # other yet): 6 of them wait, draining 2 per second. After that the queue
    # never picks the slow slot while a fast one is less busy. Were the slots'
    # view of waiting requests false, slow requests would keep refilling the
    # 8 global places and the fast hosts would crawl at the slow host's pace
    # (10+ s).
    assert spider.fast_done < 6
    assert mockserver.host_stats(1)["max_inflight"] <= 2


@asyncio_test
async def test_shutdown_with_requests_in_flight_is_quick_and_clean(
    mockserver: MockServer, no_unclosed: None
) -> None:
    urls = [mockserver.url("/delay/30", host=h) for h in (1, 2) for _ in range(4)]
    crawler_box: list[Any] = []

    class Stopping(Collector):
        async def start(self) -> Any:
            crawler_box.append(self.crawler)
            async for request in super().start():
                yield request

    async def four_at_server() -> bool:
        return bool(crawler_box) and (await mockserver.host_stats_async(1))["inflight"] >= 4

    async def stop_soon() -> None:
        await wait_until(four_at_server, within=30)
        await crawler_box[0].stop_async()

    stopper = asyncio.ensure_future(stop_soon())
    t0 = time.monotonic()
    crawler = await crawl(
        Stopping, {"ASYNCFETCH_SHUTDOWN_TIMEOUT": 0.5, "DOWNLOAD_TIMEOUT": 60}, requests=urls
    )
    await stopper
    assert time.monotonic() - t0 < 5
    spider = crawler.spider
    assert isinstance(spider, Stopping)
    assert spider.failure_types() == [CancelledAtCloseError] * len(urls)
    assert all(f.check(DownloadCancelledError) for f in spider.failures)
    assert crawler.stats.get_value("finish_reason") == "shutdown"

    async def none_at_server() -> bool:
        return (await mockserver.host_stats_async(1))["inflight"] == 0

    # The server sees the cancelled connections close a moment later.
    assert await wait_until(none_at_server)
    gc.collect()
