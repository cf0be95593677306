"""The start window: start() read as fast as the crawl needs it, not whole."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.utils.test import get_crawler

from scrapy_asyncfetch._config import RefusedComponent
from scrapy_asyncfetch.startwindow import POLL_INTERVAL, StartWindow, StartWindowMiddleware
from tests.conftest import BASE_SETTINGS, asyncio_test, serve

# --------------------------------------------------------------------------- the policy


class FakeScheduler:
    """A queue length that drains by ``rate`` requests per second of the fake clock."""

    def __init__(self, queued: int, rate: float) -> None:
        self.queued = queued
        self.rate = rate
        self.now = 0.0
        self.looks = 0

    def length(self) -> int:
        self.looks += 1
        return self.queued

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.queued = max(0, self.queued - int(self.rate * seconds))

    def window(self, size: int, closing: bool = False) -> StartWindow:
        return StartWindow(
            size, self.length, closing=lambda: closing, sleep=self.sleep, clock=lambda: self.now
        )


@asyncio_test
async def test_below_the_window_requests_pass_without_waiting() -> None:
    scheduler = FakeScheduler(queued=0, rate=0)
    window = scheduler.window(100)
    for _ in range(100):
        await window.admit()
        scheduler.queued += 1
    assert scheduler.now == 0
    assert window.holds == 0
    # The room measured at the first look lasts: the length is not read per request.
    assert scheduler.looks == 1


@asyncio_test
async def test_a_full_window_holds_until_half_drained() -> None:
    scheduler = FakeScheduler(queued=100, rate=1000)
    window = scheduler.window(100)
    await window.admit()
    assert scheduler.queued <= 50
    assert window.holds == 1
    # 50 requests at 1,000/s: 50 ms, looked at once per poll.
    assert window.held_seconds == pytest.approx(0.05, abs=POLL_INTERVAL)
    # Then the room left lets start() go on without another look.
    looks = scheduler.looks
    for _ in range(40):
        await window.admit()
        scheduler.queued += 1
    assert scheduler.looks == looks
    assert window.holds == 1


@asyncio_test
async def test_a_closing_crawl_is_never_held() -> None:
    scheduler = FakeScheduler(queued=500, rate=0)
    window = scheduler.window(100, closing=True)
    await window.admit()
    assert scheduler.now == 0


def test_a_window_of_zero_reads_start_whole() -> None:
    crawler = get_crawler(settings_dict={"ASYNCFETCH_START_WINDOW": 0})
    with pytest.raises(Exception, match="ASYNCFETCH_START_WINDOW is 0"):
        StartWindowMiddleware.from_crawler(crawler)


def test_a_bad_window_refuses_the_crawl(caplog: pytest.LogCaptureFixture) -> None:
    crawler = get_crawler(settings_dict={"ASYNCFETCH_START_WINDOW": "lots"})
    assert isinstance(StartWindowMiddleware.from_crawler(crawler), RefusedComponent)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "ASYNCFETCH_START_WINDOW must be a number" in error


# --------------------------------------------------------------------------- crawls

URLS = 400


class ListSpider(Spider):
    """Yields ``URLS`` requests from start() without ever awaiting, as a URL file reader does."""

    name = "list"

    def __init__(self, base: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base = base
        self.fetched = 0

    async def start(self) -> AsyncIterator[Any]:
        yield {"kind": "an item from start()"}
        for n in range(URLS):
            yield Request(f"{self.base}/{n}")

    def parse(self, response: Any) -> None:
        self.fetched += 1


async def queue_high_mark(window: int) -> tuple[int, Crawler]:
    """Crawl ``URLS`` slow pages at 8 at a time; return the most the scheduler held."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response(text="ok")

    most = 0
    crawler_box: list[Crawler] = []

    async def watch() -> None:
        nonlocal most
        while True:
            await asyncio.sleep(0.005)
            if crawler_box and crawler_box[0].engine and crawler_box[0].engine.scheduler:
                most = max(most, len(crawler_box[0].engine.scheduler))  # type: ignore[arg-type]

    async with serve(slow) as base:
        watcher = asyncio.ensure_future(watch())
        settings = {"CONCURRENT_REQUESTS": 8, "ASYNCFETCH_START_WINDOW": window}
        try:
            crawler = get_crawler(ListSpider, {**BASE_SETTINGS, **settings})
            crawler_box.append(crawler)
            await crawler.crawl_async(base=base)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return most, crawler


@asyncio_test
async def test_the_scheduler_holds_at_most_the_window() -> None:
    most, crawler = await queue_high_mark(window=40)
    assert crawler.stats is not None
    assert crawler.stats.get_value("finish_reason") == "finished"
    assert crawler.spider.fetched == URLS  # type: ignore[union-attr]
    assert crawler.stats.get_value("item_scraped_count") == 1
    assert crawler.stats.get_value("asyncfetch/ledger/unaccounted") == 0
    assert 0 < most <= 40
    assert crawler.stats.get_value("asyncfetch/start_window/holds") > 0


@asyncio_test
async def test_without_a_window_the_scheduler_takes_all_of_start() -> None:
    # The same crawl with the window off: what the window prevents does happen.
    most, crawler = await queue_high_mark(window=0)
    assert crawler.spider.fetched == URLS  # type: ignore[union-attr]
    assert most > URLS // 2
    assert crawler.stats is not None
    assert crawler.stats.get_value("asyncfetch/start_window/holds") is None
