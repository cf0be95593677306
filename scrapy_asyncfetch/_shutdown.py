"""Ending a crawl: from inside it, and the middleware's part when it ends."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

# The event loop keeps only weak references to tasks: these must not be
# collected before they have closed the spider.
_closing_tasks: set[asyncio.Task[None]] = set()


def close_crawl_soon(crawler: Crawler, reason: str) -> None:
    """Start closing the spider with ``reason``, without waiting for it; no-op
    when no spider is open."""
    engine = crawler.engine
    if engine is None or engine.spider is None:
        return
    task = asyncio.get_running_loop().create_task(engine.close_spider_async(reason=reason))
    _closing_tasks.add(task)
    task.add_done_callback(_closing_tasks.discard)


class Shutdown:
    """The fetches in flight, and ending them when the crawl closes: a grace
    period, then cancellation, which :meth:`closed_it` tells from any other.

    The fetches are the download tasks Scrapy runs anyway: tracking them costs
    no task of our own per request.
    """

    def __init__(self) -> None:
        #: Set once the crawl closes: nothing new starts from then on.
        self.closing = False
        self.started = asyncio.Event()
        #: Tasks awaiting a fetch right now (Scrapy runs each download in a task of its own).
        self._in_flight: set[asyncio.Task[object]] = set()
        #: Those cancelled here, until they have left the fetch.
        self._cancelled: set[asyncio.Task[object]] = set()
        self._cancelled_left = asyncio.Event()

    def begin(self) -> None:
        self.closing = True
        self.started.set()

    def entered(self, task: asyncio.Task[object]) -> None:
        self._in_flight.add(task)

    def left(self, task: asyncio.Task[object]) -> None:
        self._in_flight.discard(task)
        if task in self._cancelled:
            self._cancelled.discard(task)
            if not self._cancelled:
                self._cancelled_left.set()

    def closed_it(self, task: asyncio.Task[object]) -> bool:
        """Was ``task``'s CancelledError raised by :meth:`cancel_in_flight` alone?
        Then the cancellation is taken back; if anyone else cancelled it too,
        it must go through."""
        return task in self._cancelled and task.uncancel() == 0

    async def wait_in_flight(self, grace: float) -> None:
        """Give the fetches in flight ``grace`` seconds to finish."""
        if self._in_flight:
            logger.info(
                "Closing: giving %d request(s) in flight %.1f s to finish",
                len(self._in_flight),
                grace,
            )
            await asyncio.wait(set(self._in_flight), timeout=grace)

    async def cancel_in_flight(self) -> None:
        """Cancel the fetches in flight; return once they have all left the fetch."""
        tasks = self._in_flight - self._cancelled
        if tasks:
            logger.info("Cancelling %d request(s) still in flight", len(tasks))
            self._cancelled |= tasks
            self._cancelled_left.clear()
            for task in tasks:
                task.cancel()
        if self._cancelled:
            await self._cancelled_left.wait()
