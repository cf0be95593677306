"""Read a spider's ``start()`` only as fast as the crawl needs its requests.

Scrapy's engine keeps taking requests from ``start()`` while the downloader is full, so a
spider that yields a million URLs has all of them in its scheduler (about 1.2 KB each)
before the first page is parsed. This spider middleware holds ``start()`` back while the
scheduler already holds ``ASYNCFETCH_START_WINDOW`` requests, so memory stays flat however
long the list is, and a URL file is read as the crawl goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Self

from scrapy import Request, signals
from scrapy.exceptions import NotConfigured

from . import _compat
from ._config import RefusedComponent, SettingsError, get_int

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: How often a held ``start()`` looks at the scheduler again. Scrapy signals nothing when
#: a request leaves the scheduler, and a signal per request would cost every request; at
#: 1,000 pages/s a 50 ms look lets 50 requests go, a small part of any useful window.
POLL_INTERVAL = 0.05


class StartWindow:
    """When the next start request may go to a scheduler of ``queued()`` requests.

    Reading the scheduler's length can cost a pass over its per-slot queues, so it is read
    only when the room measured last time is used up: at most once per half window while
    the crawl keeps up, plus once per poll while ``start()`` is held.
    """

    def __init__(
        self,
        window: int,
        queued: Callable[[], int],
        *,
        closing: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self._queued = queued
        self._closing = closing
        self._sleep = sleep
        self._clock = clock
        self._room = 0
        #: How many times start() was held, and for how long in all.
        self.holds = 0
        self.held_seconds = 0.0

    async def admit(self) -> None:
        """Return once one more request fits in the window (or the crawl is closing)."""
        if self._room > 0:
            self._room -= 1
            return
        queued = self._queued()
        if queued >= self.window:
            # Wait for the scheduler to drain to half the window, so that a held start()
            # then goes on for a while rather than one request per look.
            self.holds += 1
            started = self._clock()
            while queued > self.window // 2 and not self._closing():
                await self._sleep(POLL_INTERVAL)
                queued = self._queued()
            self.held_seconds += self._clock() - started
        self._room = max(self.window - queued - 1, 0)


class StartWindowMiddleware:
    """Spider middleware that applies a :class:`StartWindow` to ``start()``.

    Items from ``start()`` pass at once; only requests wait for room. Enabled by the
    add-on; ``ASYNCFETCH_START_WINDOW = 0`` reads ``start()`` whole, as Scrapy does.
    """

    def __init__(self, crawler: Crawler, window: int) -> None:
        self.crawler = crawler
        self.window = StartWindow(window, self._queued, closing=self._closing)
        self._unmeasurable = False
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self | RefusedComponent:
        try:
            window = get_int(crawler.settings, "ASYNCFETCH_START_WINDOW")
        except SettingsError as exc:
            return RefusedComponent(crawler, exc)
        if window == 0:
            raise NotConfigured("ASYNCFETCH_START_WINDOW is 0: start() is read whole")
        return cls(crawler, window)

    async def process_start(self, start: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for item_or_request in start:
            if isinstance(item_or_request, Request) and not self._unmeasurable:
                await self.window.admit()
            yield item_or_request

    def _queued(self) -> int:
        scheduler = self.crawler.engine.scheduler if self.crawler.engine else None
        try:
            return len(scheduler)  # type: ignore[arg-type]
        except TypeError:
            # A custom scheduler need not have a length (BaseScheduler does not require
            # one): then there is nothing to measure the window against.
            self._unmeasurable = True
            logger.warning(
                "ASYNCFETCH_START_WINDOW has no effect: the scheduler %s has no length; "
                "start() is read whole",
                type(scheduler).__name__,
            )
            return 0

    def _closing(self) -> bool:
        return _compat.engine_closing(self.crawler)

    def _spider_closed(self) -> None:
        stats = self.crawler.stats
        if stats is not None and self.window.holds:
            stats.set_value("asyncfetch/start_window/holds", self.window.holds)
            stats.set_value(
                "asyncfetch/start_window/held_seconds", round(self.window.held_seconds, 3)
            )
