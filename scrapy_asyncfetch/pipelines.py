"""Item pipeline that writes each :class:`~scrapy_asyncfetch.page.Page` to disk."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Self, TypeVar

from scrapy.exceptions import CloseSpider, DropItem, NotConfigured

from ._config import RefusedComponent, SettingsError, get_bool, get_int
from ._shutdown import close_crawl_soon
from .page import Page, note_written
from .storage import ManifestRecord, PageStore, PageWrite

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: The spider's finish_reason when pages cannot be written.
WRITE_ERROR_REASON = "asyncfetch_write_error"


#: Pages one thread hand-off writes at most: enough to share its cost, small enough that a
#: page waits little behind the others.
MAX_BATCH = 64


class _Lane:
    """Pages waiting for one writer thread, and whether a batch of them is being written."""

    __slots__ = ("busy", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[PageWrite, asyncio.Future[tuple[int, ManifestRecord]]]] = []
        self.busy = False


class PageWriterPipeline:
    """Store every ``Page`` item under ``ASYNCFETCH_PAGES_DIR`` and list it in the manifest.

    Other items pass through untouched. Pages are written in batches, one thread
    hand-off each, over ``ASYNCFETCH_WRITE_CONCURRENCY`` lanes; a URL always takes
    the same lane, so two writes of one URL never overlap. The first OS error while
    writing stops the crawl with finish_reason ``asyncfetch_write_error``; what was
    written before stays on disk and in the manifest.
    """

    def __init__(self, crawler: Crawler, store: PageStore, write_concurrency: int) -> None:
        self.crawler = crawler
        self.store = store
        # A pool of our own rather than asyncio's default one: that one also runs
        # DNS lookups, which a slow disk must not starve.
        self._executor = ThreadPoolExecutor(
            write_concurrency, thread_name_prefix="asyncfetch-write"
        )
        self._lanes = [_Lane() for _ in range(write_concurrency)]
        self._opened = False
        self._failed = False
        # The event loop keeps only weak references to tasks: hold those running.
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self | RefusedComponent:
        settings = crawler.settings
        pages_dir = settings.get("ASYNCFETCH_PAGES_DIR")
        if not pages_dir:
            raise NotConfigured("ASYNCFETCH_PAGES_DIR is not set")
        try:
            store = PageStore(
                os.fspath(pages_dir), gzipped=get_bool(settings, "ASYNCFETCH_PAGES_GZIP")
            )
            concurrency = get_int(settings, "ASYNCFETCH_WRITE_CONCURRENCY", minimum=1)
        except SettingsError as exc:
            return RefusedComponent(crawler, exc)
        return cls(crawler, store, concurrency)

    async def open_spider(self) -> None:
        try:
            await self._in_thread(self.store.open)
        except OSError as exc:
            self._fail(exc)
            # The documented way for a component to refuse to start: Scrapy closes
            # the spider with this reason instead of crawling.
            raise CloseSpider(WRITE_ERROR_REASON) from None
        self._opened = True

    async def process_item(self, item: Any) -> Any:
        if not isinstance(item, Page):
            return item
        if self._failed:
            raise DropItem(f"{WRITE_ERROR_REASON}: writing stopped after an earlier error")
        page = PageWrite(
            url=item.url,
            final_url=item.final_url,
            status=item.status,
            content_type=item.content_type,
            body=item.body,
            fetched_at=item.fetched_at,
        )
        try:
            written, record = await self._write(page)
        except OSError as exc:
            self.crawler.stats.inc_value("asyncfetch/page_write_errors")
            if not self._failed:
                self._fail(exc)
                close_crawl_soon(self.crawler, WRITE_ERROR_REASON)
            raise DropItem(f"{WRITE_ERROR_REASON}: cannot write {item.url}: {exc}") from exc
        note_written(item, record)
        self.crawler.stats.inc_value("asyncfetch/pages_written")
        self.crawler.stats.inc_value("asyncfetch/page_bytes_written", written)
        return item

    def _write(self, page: PageWrite) -> asyncio.Future[tuple[int, ManifestRecord]]:
        """Queue *page* on its URL's lane; the future ends when it is written."""
        future: asyncio.Future[tuple[int, ManifestRecord]] = (
            asyncio.get_running_loop().create_future()
        )
        lane = self._lanes[hash(page.url) % len(self._lanes)]
        lane.waiting.append((page, future))
        if not lane.busy:
            lane.busy = True
            self._start(self._drain(lane))
        return future

    async def _drain(self, lane: _Lane) -> None:
        """Write the lane's waiting pages, a batch per hand-off, until none is left."""
        try:
            while lane.waiting:
                batch = lane.waiting[:MAX_BATCH]
                del lane.waiting[:MAX_BATCH]
                outcomes: list[tuple[int, ManifestRecord] | BaseException]
                try:
                    outcomes = list(
                        await self._in_thread(self.store.write_batch, [page for page, _ in batch])
                    )
                except Exception as exc:  # a bug must not strand the waiting pages
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            lane.busy = False

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close_spider(self) -> None:
        try:
            if self._opened:
                # Runs after a write error too: it must keep every line written so far.
                await self._in_thread(self.store.close)
        except OSError as exc:
            logger.error("Cannot compact the manifest in %s: %s", self.store.root, exc)
        finally:
            self._executor.shutdown(wait=False)

    def _fail(self, exc: OSError) -> None:
        # One line, no traceback: the OS error says all there is to say.
        self._failed = True
        logger.error(
            "Cannot write pages to %s (ASYNCFETCH_PAGES_DIR): %s; closing the spider (%s)",
            self.store.root,
            exc,
            WRITE_ERROR_REASON,
        )

    async def _in_thread(self, func: Callable[..., _T], /, *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)
