"""Account for every request: it ends as a page, or as a recorded failure.

Every request that enters the scheduler gets a ledger id in its meta; retries
and redirects copy the meta, so they stay the same logical request. The first
outcome of an id is final:

* a :class:`~scrapy_asyncfetch.Page` item scraped from its response: a page;
* a download exception after RetryMiddleware gave up, an ``IgnoreRequest``
  from any downloader middleware (offsite, robots.txt, ...): seen by
  :class:`LedgerDownloaderMiddleware`, placed outermost so it sees final outcomes;
* an exception raised by a downloader middleware's ``process_response`` (too
  many redirects, a bad gzip body), which Scrapy shows no middleware: seen by
  :class:`LedgerDownloader`, the engine's downloader;
* a response filtered by HttpErrorMiddleware or a callback exception: seen by
  :class:`LedgerSpiderMiddleware`;
* a Page dropped by a pipeline: the ``item_dropped`` signal;
* at close: a response that produced no Page, and (without JOBDIR, which keeps
  them for the next run) requests never fetched because the crawl stopped.

Failures are appended to a JSON Lines file as they happen, so a crash keeps them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.core.downloader import Downloader
from scrapy.exceptions import CloseSpider, IgnoreRequest, NotConfigured
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object
from scrapy.utils.request import request_from_dict

from . import _compat
from .errors import CancelledAtCloseError
from .journal import Journal
from .page import Page
from .pipelines import WRITE_ERROR_REASON, PageWriterPipeline
from .storage import JsonLines

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

    # typing.Self requires Python 3.11
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

#: Request meta key holding the ledger id of the logical request.
ID_KEY = "asyncfetch_ledger_id"


class Ledger:
    """The extension holding the accounts; enabled by the add-on."""

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        self.crawler = crawler
        path = settings.get("ASYNCFETCH_FAILURES_FILE")
        pages_dir = settings.get("ASYNCFETCH_PAGES_DIR")
        writes_pages = _page_writer_enabled(settings)
        # When pages are written, a response that yields none is a failure.
        self._expect_pages = writes_pages
        # In the pages directory, whose problems the page writer reports itself.
        self._beside_pages = not path and writes_pages
        if not path and pages_dir:
            path = os.path.join(pages_dir, "failures.jsonl")
        self.path: str | None = path or None
        self._file: JsonLines | None = None
        jobdir = settings.get("JOBDIR")
        self._journal = Journal(jobdir) if jobdir else None
        if self._journal is not None and self._journal.crashed:
            # Scrapy's queue is unreadable after a kill, and its URLs are in the
            # seen set: rebuilt from the journal instead (before the scheduler
            # opens it, which is why this happens here).
            logger.warning(
                "The last run with JOBDIR %s did not close cleanly: rescheduling its "
                "unfinished requests from the journal",
                jobdir,
            )
            shutil.rmtree(os.path.join(jobdir, "requests.queue"), ignore_errors=True)
        #: ids that left the scheduler and have no outcome yet.
        self._dispatched: set[str] = set()
        self._closing: asyncio.Future[None] | None = None
        self._unjournalable_warned = False
        # Ids are unique across runs: a resumed crawl (JOBDIR) brings back
        # requests whose ids were given by an earlier process.
        self._run = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        #: id -> URL of requests that entered the scheduler and have no outcome yet.
        self._pending: dict[str, str] = {}
        #: ids whose final response arrived, with its status, awaiting a Page.
        self._responded: dict[str, tuple[int, int]] = {}  # id -> (status, attempts)
        self.entered = 0
        self.duplicates = 0
        self.pages = 0
        #: Responses processed without error that yielded no Page: the outcome
        #: of a spider that does not write pages.
        self.no_page = 0
        self.resumed = 0
        self._resumed_ended: set[str] = set()
        self.failures: Counter[str] = Counter()
        #: Inputs refused before they could become requests (e.g. invalid URLs).
        self.rejected = 0
        for handler, signal in (
            (self._spider_opened, signals.spider_opened),
            (self._request_scheduled, signals.request_scheduled),
            (self._request_dropped, signals.request_dropped),
            (self._response_received, signals.response_received),
            (self._item_scraped, signals.item_scraped),
            (self._item_dropped, signals.item_dropped),
            (self._spider_closed, signals.spider_closed),
        ):
            crawler.signals.connect(handler, signal=signal)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    # -- recording -------------------------------------------------------------

    def record_failure(self, url: str, reason: str, message: str) -> None:
        """Record an input that never became a request, e.g. an invalid line of
        a URL file: it is accounted for, outside the requests' invariant."""
        self.rejected += 1
        self._write(url, reason, message, attempts=0, status=None)

    def _write(
        self, url: str, reason: str, message: str, *, attempts: int, status: int | None
    ) -> None:
        self.failures[reason] += 1
        self.crawler.stats.inc_value(f"asyncfetch/ledger/failures/{reason}")
        if self._file is None:
            return
        try:
            self._file.append(
                {
                    "url": url,
                    "reason": reason,
                    "message": message[:500],
                    "attempts": attempts,
                    "status": status,
                    "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                }
            )
        except OSError as exc:
            self._file_failed(exc)

    def fail(self, request: Request, exc: BaseException, status: int | None = None) -> None:
        """Record the final failure of ``request`` unless it already has an outcome."""
        ledger_id = request.meta.get(ID_KEY)
        if isinstance(exc, CancelledAtCloseError) and self._journal is not None:
            return  # in the journal: the next run fetches it
        # No id: not a request from the scheduler (robots.txt, a component's
        # own download), so not one of the requests the ledger accounts for.
        if ledger_id is None or not self._end(ledger_id):
            return
        # The URL the request was made for, before any redirect.
        url = (request.meta.get("redirect_urls") or [request.url])[0]
        if isinstance(exc, HttpError):
            status = exc.response.status
        self._write(
            url,
            type(exc).__name__,
            str(exc) or type(exc).__name__,
            attempts=_attempts(request),
            status=status,
        )

    def fetch_failed(self, failure: Failure, request: Request) -> Failure:
        """Errback of a download: record its exception if the request is still
        without an outcome (no middleware's process_exception was shown it)."""
        if failure.value is not None and request.meta.get(ID_KEY) in self._dispatched:
            self.fail(request, failure.value)
        return failure

    def _end(self, ledger_id: str) -> bool:
        """Close ``ledger_id``; False if it had an outcome already."""
        self._responded.pop(ledger_id, None)
        self._dispatched.discard(ledger_id)
        if self._journal is not None:
            self._journal.done(ledger_id)
        if self._pending.pop(ledger_id, None) is not None:
            return True
        if ledger_id.startswith(self._run) or ledger_id in self._resumed_ended:
            self.crawler.stats.inc_value("asyncfetch/ledger/repeated_outcomes")
            return False
        # Given by an earlier run of the same JOBDIR.
        self._resumed_ended.add(ledger_id)
        self.resumed += 1
        return True

    # -- signals ---------------------------------------------------------------

    def dispatched(self, request: Request) -> None:
        """``request`` left the scheduler."""
        ledger_id = request.meta.get(ID_KEY)
        if ledger_id is None:
            return
        self._dispatched.add(ledger_id)
        if self._journal is not None:
            self._journal.dispatched(ledger_id)

    def _journal_scheduled(self, journal: Journal, ledger_id: str, request: Request) -> None:
        try:
            as_dict = request.to_dict(spider=self.crawler.spider)
        except ValueError as exc:  # a callback that is not a spider method
            if not self._unjournalable_warned:
                self._unjournalable_warned = True
                logger.warning("Cannot journal %s for JOBDIR resumption: %s", request, exc)
            return
        journal.scheduled(ledger_id, as_dict)

    def _spider_opened(self) -> None:
        if self._journal is not None:
            self._requeue_unfinished(self._journal)
        if self.path is None:
            return
        file = JsonLines(self.path)
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            file.open()
        except OSError as exc:
            self._log_file_error(exc)
            raise CloseSpider(WRITE_ERROR_REASON) from None
        self._file = file

    def _requeue_unfinished(self, journal: Journal) -> None:
        unfinished = journal.open()
        spider = self.crawler.spider
        for as_dict in unfinished:
            request = request_from_dict(as_dict, spider=spider)
            # In the JOBDIR's seen set, or lost from it by the kill (its file's
            # unflushed tail): let this copy in, and filter start()'s copy.
            _compat.mark_seen(self.crawler, request)
            request.dont_filter = True
            self.crawler.engine.crawl(request)
        if unfinished:
            logger.info(
                "Rescheduled %d unfinished request(s) of the last run from the journal",
                len(unfinished),
            )
            self.crawler.stats.set_value("asyncfetch/ledger/requeued_in_flight", len(unfinished))

    def _never_ended(self, ledger_id: str, reason: str) -> tuple[str, str]:
        """Reason and message for a request still without an outcome at close."""
        if reason != "finished":
            return "CrawlClosed", f"Not fetched: crawl closed ({reason})"
        if ledger_id in self._dispatched:
            # Raised by a downloader middleware's process_response, with a
            # DOWNLOADER other than LedgerDownloader, which would have seen it.
            return (
                "DownloadError",
                "Failed after its response arrived, in a downloader middleware",
            )
        # The scheduler ran dry: a request never dispatched was refused by a
        # request_scheduled handler, which Scrapy does without a signal.
        return (
            "IgnoreRequest",
            "Refused when scheduled (OffsiteMiddleware or another request_scheduled handler)",
        )

    def _log_file_error(self, exc: OSError) -> None:
        logger.log(
            logging.INFO if self._beside_pages else logging.ERROR,
            "Cannot write the failures file %s (%s): %s; closing the spider (%s)",
            self.path,
            "ASYNCFETCH_PAGES_DIR" if self._beside_pages else "ASYNCFETCH_FAILURES_FILE",
            exc.strerror or exc,
            WRITE_ERROR_REASON,
        )

    def _file_failed(self, exc: OSError) -> None:
        """The failures file cannot be written any more (a full disk): say so
        once, keep counting, and close the crawl, since what fails from now on
        could not be recorded."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._log_file_error(exc)
        engine = self.crawler.engine
        if engine is not None and engine.spider is not None:
            self._closing = asyncio.ensure_future(
                engine.close_spider_async(reason=WRITE_ERROR_REASON)
            )

    def _request_scheduled(self, request: Request) -> None:
        ledger_id = request.meta.get(ID_KEY)
        # With an id: a retry or redirect of a request already counted.
        if ledger_id is None:
            ledger_id = f"{self._run}-{next(self._ids)}"
            request.meta[ID_KEY] = ledger_id
            self._pending[ledger_id] = request.url
            self.entered += 1
        if self._journal is not None:
            self._journal_scheduled(self._journal, ledger_id, request)

    def _request_dropped(self, request: Request) -> None:
        ledger_id = request.meta.get(ID_KEY, "")
        if ledger_id in self._pending and not request.meta.get("redirect_urls"):
            # A new request filtered as a duplicate never entered the scheduler.
            del self._pending[ledger_id]
            self.entered -= 1
            self.duplicates += 1
            if self._journal is not None:
                self._journal.done(ledger_id)
        else:
            self.fail(request, IgnoreRequest("Filtered as duplicate after a redirect"))

    def _response_received(self, response: Response, request: Request) -> None:
        ledger_id = request.meta.get(ID_KEY)
        if ledger_id in self._pending:
            self._responded[ledger_id] = (response.status, _attempts(request))

    def output_done(self, response: Response, pages: int) -> None:
        """The callback for ``response`` finished without error, having yielded
        ``pages`` Page items (which end the request when written)."""
        request = response.request
        if request is None or pages or (ledger_id := request.meta.get(ID_KEY)) is None:
            return
        if self._expect_pages:
            self._no_page_failure(ledger_id, response.status, _attempts(request))
        elif self._end(ledger_id):
            self.no_page += 1

    def _no_page_failure(self, ledger_id: str, status: int, attempts: int) -> None:
        url = self._pending.get(ledger_id)
        if url is None or not self._end(ledger_id):
            return
        self._write(
            url,
            # Non-2xx: filtered by HttpErrorMiddleware into an errback that
            # made no page of it (without an errback it is recorded at once).
            "NoPage" if 200 <= status < 300 else "HttpError",
            f"Response {status} produced no page",
            attempts=attempts,
            status=status,
        )

    def _item_scraped(self, item: Any, response: Response) -> None:
        if isinstance(item, Page) and response is not None:
            ledger_id = response.request.meta.get(ID_KEY) if response.request else None
            if ledger_id is not None and self._end(ledger_id):
                self.pages += 1

    def _item_dropped(self, item: Any, response: Response, exception: BaseException) -> None:
        if isinstance(item, Page) and response is not None and response.request is not None:
            self.fail(response.request, exception, status=item.status)

    def _spider_closed(self, reason: str) -> None:
        # Left: responses handled by an errback, which spider middlewares do not see.
        for ledger_id, (status, attempts) in list(self._responded.items()):
            self._no_page_failure(ledger_id, status, attempts)
        self._responded.clear()
        left_for_resume = 0
        if self._journal is not None and reason != "finished":
            left_for_resume = len(self._pending)
        else:
            for ledger_id, url in list(self._pending.items()):
                why = self._never_ended(ledger_id, reason)  # before _end forgets it
                self._end(ledger_id)
                self._write(url, *why, attempts=0, status=None)
        self._pending.clear()
        for jsonl in (self._file, self._journal):
            if jsonl is not None:
                jsonl.close()
        self._file = None
        self._summarize(reason, left_for_resume)

    def _summarize(self, reason: str, left_for_resume: int) -> None:
        stats = self.crawler.stats
        failed = sum(self.failures.values())
        # Every id that entered ends exactly once, or is kept in JOBDIR; ids
        # from an earlier run add outcomes without having entered in this one.
        unaccounted = (
            self.entered
            + self.resumed
            + self.rejected
            - self.pages
            - self.no_page
            - failed
            - left_for_resume
        )
        for key, value in (
            ("requests", self.entered),
            ("pages", self.pages),
            ("no_page", self.no_page),
            ("failures", failed),
            ("duplicates", self.duplicates),
            ("resumed", self.resumed),
            ("rejected_inputs", self.rejected),
            ("left_for_resume", left_for_resume),
            ("unaccounted", unaccounted),
        ):
            stats.set_value(f"asyncfetch/ledger/{key}", value)
        by_reason = ", ".join(f"{r}: {n}" for r, n in self.failures.most_common()) or "none"
        level = logging.WARNING if unaccounted else logging.INFO
        logger.log(
            level,
            "Ledger: %d requests entered the scheduler, %d pages, %d without a page, "
            "%d failures (%s), %d inputs rejected, %d duplicates filtered, "
            "%d resumed from JOBDIR, %d left in JOBDIR, %d unaccounted%s",
            self.entered,
            self.pages,
            self.no_page,
            failed,
            by_reason,
            self.rejected,
            self.duplicates,
            self.resumed,
            left_for_resume,
            unaccounted,
            f"; failures in {self.path}" if self.path else "",
        )
        if unaccounted:
            stats.set_value("finish_reason", f"{reason}_with_unaccounted_requests")


def _ledger(crawler: Crawler) -> Ledger:
    ledger = crawler.get_extension(Ledger)
    if ledger is None:
        raise NotConfigured("the Ledger extension is not enabled")
    return ledger


class LedgerDownloaderMiddleware:
    """Outermost downloader middleware: the exceptions it sees are final; and,
    with JOBDIR, the requests it sees leave the scheduler for the journal."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def process_request(self, request: Request) -> None:
        self.ledger.dispatched(request)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(_ledger(crawler))

    def process_exception(self, request: Request, exception: Exception) -> None:
        self.ledger.fail(request, exception)


class LedgerDownloader(Downloader):
    """Scrapy's downloader (the ``DOWNLOADER`` setting), showing the ledger the
    exceptions a downloader middleware's process_response raises (too many
    redirects, a bad gzip body, a decompressed size over DOWNLOAD_MAXSIZE):
    Scrapy passes those to no middleware, only to the request's errback."""

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self._ledger = crawler.get_extension(Ledger)

    def fetch(self, request: Request) -> Deferred[Response | Request]:  # type: ignore[override]
        result: Deferred[Response | Request] = super().fetch(request)
        if self._ledger is not None:
            result.addErrback(self._ledger.fetch_failed, request)
        return result


class LedgerSpiderMiddleware:
    """Sees responses HttpErrorMiddleware filters, and callback exceptions,
    before HttpErrorMiddleware silences them (so its order must be above 50);
    and the end of each callback's output, to know it yielded no page."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(_ledger(crawler))

    def process_spider_exception(self, response: Response, exception: Exception) -> None:
        if response.request is not None:
            self.ledger.fail(response.request, exception, status=response.status)

    def process_spider_output(self, response: Response, result: Iterable[Any]) -> Iterator[Any]:
        pages = 0
        for item in result:
            pages += isinstance(item, Page)
            yield item
        self.ledger.output_done(response, pages)

    async def process_spider_output_async(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        pages = 0
        async for item in result:
            pages += isinstance(item, Page)
            yield item
        # Reached only when the callback finished without raising.
        self.ledger.output_done(response, pages)


def _page_writer_enabled(settings: BaseSettings) -> bool:
    pipelines = build_component_list(settings.getwithbase("ITEM_PIPELINES"))
    return any(load_object(p) is PageWriterPipeline for p in pipelines)


def _attempts(request: Request) -> int:
    return int(request.meta.get("retry_times", 0)) + 1
