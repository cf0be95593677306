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

:class:`Ledger` is the Scrapy side; the accounts are a plain object
(:class:`~._accounting.Accounts`), the file is :class:`~._failures.FailuresFile`
and JOBDIR recovery is :class:`~._journal.JobdirRecovery`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from scrapy import signals
from scrapy.core.downloader import Downloader
from scrapy.exceptions import CloseSpider, IgnoreRequest, NotConfigured
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object

from ._accounting import Accounts
from ._errors import CancelledAtCloseError
from ._failures import FailuresFile, failure_record
from ._journal import JobdirRecovery
from ._shutdown import close_crawl_soon
from .page import Page, original_url, written_record
from .pipelines import WRITE_ERROR_REASON, PageWriterPipeline

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from scrapy.statscollectors import StatsCollector
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

#: Request meta key holding the ledger id of the logical request.
ID_KEY = "asyncfetch_ledger_id"


class ClusterLink(Protocol):
    """Where a cluster crawl's outcomes go (the shared frontier), beside this worker's
    own files: ``kind`` is ``pages``, ``no_page`` or ``failures``; ``ledger_id`` is None
    for an input that never became a request."""

    def outcome(self, ledger_id: str | None, kind: str, record: Mapping[str, Any]) -> None: ...


class Ledger:
    """The extension holding the accounts; enabled by the add-on."""

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        self.crawler = crawler
        writes_pages = _page_writer_enabled(settings)
        # When pages are written, a response that yields none is a failure.
        self._expect_pages = writes_pages
        failures_file = settings.get("ASYNCFETCH_FAILURES_FILE")
        self.path = FailuresFile.choose_path(failures_file, settings.get("ASYNCFETCH_PAGES_DIR"))
        self._failures_file = (
            None
            if self.path is None
            else FailuresFile(
                self.path,
                beside_pages=not failures_file and writes_pages,
                close_reason=WRITE_ERROR_REASON,
                on_broken=lambda: close_crawl_soon(crawler, WRITE_ERROR_REASON),
            )
        )
        jobdir = settings.get("JOBDIR")
        self._recovery = JobdirRecovery(crawler, jobdir) if jobdir else None
        self.accounts = Accounts()
        #: Set by the cluster scheduler in cluster mode.
        self.cluster: ClusterLink | None = None
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

    # -- recording outcomes: from spiders, the ledger's components, signals ----

    def record_failure(self, url: str, reason: str, message: str) -> None:
        """Record an input that never became a request, e.g. an invalid line of
        a URL file: it is accounted for, outside the requests' invariant."""
        self.accounts.rejected += 1
        self._record(url, reason, message, attempts=0, status=None)

    def record_exception(
        self, request: Request, exc: BaseException, status: int | None = None
    ) -> None:
        """Record ``exc`` as the final outcome of ``request`` unless it already has one."""
        ledger_id = request.meta.get(ID_KEY)
        if isinstance(exc, CancelledAtCloseError) and (
            self._recovery is not None or self.cluster is not None
        ):
            return  # in the journal, or back in the cluster's frontier: fetched later
        # No id: not a request from the scheduler (robots.txt, a component's
        # own download), so not one of the requests the ledger accounts for.
        if ledger_id is None or not self._settle(ledger_id):
            return
        url = original_url(request.meta, request.url)
        if isinstance(exc, HttpError):
            status = exc.response.status
        self._record(
            url,
            type(exc).__name__,
            str(exc) or type(exc).__name__,
            attempts=_attempts(request),
            status=status,
            ledger_id=ledger_id,
        )

    def download_errback(self, failure: Failure, request: Request) -> Failure:
        """Errback of a download: record its exception if the request is still
        without an outcome (no middleware's process_exception was shown it)."""
        if failure.value is not None and request.meta.get(ID_KEY) in self.accounts.dispatched:
            self.record_exception(request, failure.value)
        return failure

    def dispatched(self, request: Request) -> None:
        """``request`` left the scheduler."""
        ledger_id = request.meta.get(ID_KEY)
        if ledger_id is None:
            return
        self.accounts.dispatched.add(ledger_id)
        if self._recovery is not None:
            self._recovery.dispatched(ledger_id)

    def output_done(self, response: Response, pages: int) -> None:
        """The callback for ``response`` finished without error, having yielded
        ``pages`` Page items (which end the request when written)."""
        request = response.request
        if request is None or pages or (ledger_id := request.meta.get(ID_KEY)) is None:
            return
        if self._expect_pages:
            self._settle_without_page(ledger_id, response.status, _attempts(request))
        elif self._settle(ledger_id):
            self.accounts.no_page += 1
            if self.cluster is not None:
                url = original_url(request.meta, response.url)
                self.cluster.outcome(ledger_id, "no_page", {"url": url, "status": response.status})

    def handed_off(self, ledger_id: str) -> None:
        """Cluster mode: the request went to the shared frontier."""
        self.accounts.hand_off(ledger_id)

    def taken(self, request: Request) -> None:
        """Cluster mode: ``request`` came from the shared frontier to this worker."""
        ledger_id = request.meta.get(ID_KEY)
        if ledger_id is not None:
            self.accounts.take(ledger_id, original_url(request.meta, request.url))

    def cluster_duplicate(self, ledger_id: str) -> None:
        """Cluster mode: another worker had already entered the same request."""
        self.accounts.unenter_duplicate(ledger_id)

    def _settle(self, ledger_id: str) -> bool:
        """Give ``ledger_id`` its outcome; False if it had one already."""
        if self._recovery is not None:
            self._recovery.done(ledger_id)
        if self.accounts.settle(ledger_id):
            return True
        self.crawler.stats.inc_value("asyncfetch/ledger/repeated_outcomes")
        return False

    def _settle_without_page(self, ledger_id: str, status: int, attempts: int) -> None:
        """A response that produced no page, when pages are written: a failure."""
        url = self.accounts.pending.get(ledger_id)
        if url is None or not self._settle(ledger_id):
            return
        self._record(
            url,
            # Non-2xx: filtered by HttpErrorMiddleware into an errback that
            # made no page of it (without an errback it is recorded at once).
            "NoPage" if 200 <= status < 300 else "HttpError",
            f"Response {status} produced no page",
            attempts=attempts,
            status=status,
            ledger_id=ledger_id,
        )

    def _record(
        self,
        url: str,
        reason: str,
        message: str,
        *,
        attempts: int,
        status: int | None,
        ledger_id: str | None = None,
    ) -> None:
        """Count a failure and append it to the failures file (and, in cluster mode,
        give it to the cluster as the request's outcome)."""
        self.accounts.failures[reason] += 1
        self.crawler.stats.inc_value(f"asyncfetch/ledger/failures/{reason}")
        record = failure_record(url, reason, message, attempts=attempts, status=status)
        if self._failures_file is not None:
            self._failures_file.append(record)
        if self.cluster is not None:
            self.cluster.outcome(ledger_id, "failures", record)

    # -- signals ---------------------------------------------------------------

    def _spider_opened(self) -> None:
        if self._recovery is not None:
            self._recovery.reschedule_unfinished()
        if self._failures_file is not None and not self._failures_file.open():
            raise CloseSpider(WRITE_ERROR_REASON)

    def _request_scheduled(self, request: Request) -> None:
        ledger_id = request.meta.get(ID_KEY)
        # With an id: a retry or redirect of a request already counted.
        if ledger_id is None:
            ledger_id = self.accounts.enter(request.url)
            request.meta[ID_KEY] = ledger_id
        if self._recovery is not None:
            self._recovery.scheduled(ledger_id, request)

    def redirect_duplicate(self, request: Request) -> None:
        """``request``, a redirect, was filtered as a duplicate: the outcome of the
        request it replaces."""
        self.record_exception(request, IgnoreRequest("Filtered as duplicate after a redirect"))

    def _request_dropped(self, request: Request) -> None:
        ledger_id = request.meta.get(ID_KEY, "")
        # A new request filtered as a duplicate never entered the scheduler.
        if not request.meta.get("redirect_urls") and self.accounts.unenter_duplicate(ledger_id):
            if self._recovery is not None:
                self._recovery.done(ledger_id)
        else:
            self.redirect_duplicate(request)

    def _response_received(self, response: Response, request: Request) -> None:
        ledger_id = request.meta.get(ID_KEY)
        if ledger_id in self.accounts.pending:
            self.accounts.responded[ledger_id] = (response.status, _attempts(request))

    def _item_scraped(self, item: Any, response: Response) -> None:
        if isinstance(item, Page) and response is not None:
            ledger_id = response.request.meta.get(ID_KEY) if response.request else None
            if ledger_id is not None and self._settle(ledger_id):
                self.accounts.pages += 1
                if self.cluster is not None:
                    record = written_record(item) or {"url": item.url, "status": item.status}
                    self.cluster.outcome(ledger_id, "pages", record)

    def _item_dropped(self, item: Any, response: Response, exception: BaseException) -> None:
        if isinstance(item, Page) and response is not None and response.request is not None:
            self.record_exception(response.request, exception, status=item.status)

    def _spider_closed(self, reason: str) -> None:
        accounts = self.accounts
        # Left: responses handled by an errback, which spider middlewares do not see.
        for ledger_id, (status, attempts) in list(accounts.responded.items()):
            self._settle_without_page(ledger_id, status, attempts)
        accounts.responded.clear()
        left_for_resume = 0
        if (self._recovery is not None or self.cluster is not None) and reason != "finished":
            # Kept for the next run of the JOBDIR, or back in the cluster's frontier.
            left_for_resume = len(accounts.pending)
        else:
            for ledger_id, url in list(accounts.pending.items()):
                why = self._never_ended(ledger_id, reason)  # before _settle forgets it
                self._settle(ledger_id)
                self._record(url, *why, attempts=0, status=None, ledger_id=ledger_id)
        accounts.pending.clear()
        if self._failures_file is not None:
            self._failures_file.close()
        if self._recovery is not None:
            self._recovery.close()
        summarize(
            accounts,
            self.crawler.stats,
            reason,
            left_for_resume,
            self.path,
            left_in="the cluster" if self.cluster is not None else "JOBDIR",
        )

    def _never_ended(self, ledger_id: str, reason: str) -> tuple[str, str]:
        """Reason and message for a request still without an outcome at close."""
        if reason != "finished":
            return "CrawlClosed", f"Not fetched: crawl closed ({reason})"
        if ledger_id in self.accounts.dispatched:
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


# -- the summary at close ------------------------------------------------------


def summarize(
    accounts: Accounts,
    stats: StatsCollector,
    reason: str,
    left_for_resume: int,
    failures_path: str | None,
    *,
    left_in: str = "JOBDIR",
) -> None:
    """Set the ledger's stats and log its one-line summary; a crawl with
    unaccounted requests gets a finish_reason that says so."""
    failed = sum(accounts.failures.values())
    unaccounted = accounts.unaccounted(left_for_resume)
    for key, value in (
        ("requests", accounts.entered),
        ("pages", accounts.pages),
        ("no_page", accounts.no_page),
        ("failures", failed),
        ("duplicates", accounts.duplicates),
        ("resumed", accounts.resumed),
        ("rejected_inputs", accounts.rejected),
        ("left_for_resume", left_for_resume),
        ("handed_to_cluster", accounts.handed_off),
        ("taken_from_cluster", accounts.taken),
        ("unaccounted", unaccounted),
    ):
        stats.set_value(f"asyncfetch/ledger/{key}", value)
    by_reason = ", ".join(f"{r}: {n}" for r, n in accounts.failures.most_common()) or "none"
    logger.log(
        logging.WARNING if unaccounted else logging.INFO,
        "Ledger: %d requests entered the scheduler, %d pages, %d without a page, "
        "%d failures (%s), %d inputs rejected, %d duplicates filtered, "
        "%d resumed from JOBDIR, %d left in %s, %d unaccounted%s%s",
        accounts.entered,
        accounts.pages,
        accounts.no_page,
        failed,
        by_reason,
        accounts.rejected,
        accounts.duplicates,
        accounts.resumed,
        left_for_resume,
        left_in,
        unaccounted,
        f"; failures in {failures_path}" if failures_path else "",
        (
            f"; {accounts.handed_off} handed to the cluster, {accounts.taken} taken from it"
            if accounts.handed_off or accounts.taken
            else ""
        ),
    )
    if unaccounted:
        stats.set_value("finish_reason", f"{reason}_with_unaccounted_requests")


# -- the ledger's components ---------------------------------------------------


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

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(_ledger(crawler))

    def process_request(self, request: Request) -> None:
        self.ledger.dispatched(request)

    def process_exception(self, request: Request, exception: Exception) -> None:
        self.ledger.record_exception(request, exception)


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
            result.addErrback(self._ledger.download_errback, request)
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
            self.ledger.record_exception(response.request, exception, status=response.status)

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
