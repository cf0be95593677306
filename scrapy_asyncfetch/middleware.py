"""The downloader middleware: fetch HTTP(S) requests with aiohttp from
``process_request`` while keeping Scrapy's politeness and bookkeeping true."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import Counter
from contextlib import suppress
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import is_asyncio_available
from scrapy.utils.httpobj import urlparse_cached

from . import _compat
from ._breaker import Admission, Breaker, Reach
from ._client import Client
from ._config import (
    INCOMPATIBLE_REASON,
    FetchConfig,
    RefusedComponent,
    SettingsError,
    get_bool,
)
from ._errors import (
    CancelledAtCloseError,
    HostUnavailableError,
    UnexpectedFetchError,
    is_connection_failure,
)
from ._limits import Limiter, LimiterClosed, SlotPolicy
from ._logfilter import ConciseDownloadErrors
from ._politeness import RATE_LIMIT_STATUSES, Cut, Politeness, parse_retry_after
from ._shutdown import Shutdown
from ._signals import SignalDispatch
from ._stats import StatsBuffer

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.core.downloader import Slot
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

SCHEMES = frozenset({"http", "https"})
#: Request meta key: set it to False to leave a request to Scrapy's own handlers.
META_KEY = "asyncfetch"
#: Request meta key (internal): the wall-clock time before which a retry of a
#: request answered with ``Retry-After`` must not be sent. Wall clock, not
#: monotonic: with JOBDIR the retry may be sent by another process.
RETRY_AT_KEY = "_asyncfetch_retry_at"
#: Longest a retry waits for its newly refusing domain to be judged (seconds).
_VERDICT_HOLD = 1.0


class AsyncFetchMiddleware:
    """Fetch http(s) requests with one shared aiohttp session per crawler.

    Other schemes, and requests with ``meta["asyncfetch"] = False``, pass
    through to Scrapy's download handlers untouched.
    """

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        if not get_bool(settings, "ASYNCFETCH_ENABLED"):
            raise NotConfigured("ASYNCFETCH_ENABLED is False")
        if not is_asyncio_available():
            raise NotConfigured(
                "scrapy-asyncfetch needs the asyncio reactor: set TWISTED_REACTOR = "
                '"twisted.internet.asyncioreactor.AsyncioSelectorReactor"'
            )
        _compat.check()
        self.crawler = crawler
        self.config = FetchConfig.from_settings(settings)
        self.limiter = Limiter(self.config.concurrent_requests)
        self.politeness = (
            Politeness(
                window=self.config.backoff_window,
                threshold=self.config.backoff_threshold,
                min_rate=1 / self.config.backoff_max if self.config.backoff_max else 1.0,
                adaptive_concurrency=self.config.adaptive_concurrency,
            )
            if self.config.backoff_enabled
            else None
        )
        self.breaker = Breaker(self.config.breaker_threshold, self.config.breaker_cooldown)
        self.dispatch = SignalDispatch(crawler)
        self.client = Client(crawler, self.config, self.dispatch)
        self._stats = crawler.stats
        self._autothrottle = settings.getbool("AUTOTHROTTLE_ENABLED")
        #: AutoThrottle delays handed over by the cluster for slots not made yet.
        self._handed_delays: dict[str, float] = {}
        self._slot_settings = settings.getdict("DOWNLOAD_SLOTS")
        self._shutdown = Shutdown()
        self._buffer = StatsBuffer()
        #: Requests sent, by download slot (for the crawl report).
        self.sent: Counter[str] = Counter()
        self._watcher: asyncio.Task[None] | None = None
        self._log_filter = ConciseDownloadErrors()
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    @classmethod
    def of(cls, crawler: Crawler) -> AsyncFetchMiddleware | None:
        """The crawl's instance, if its downloader has one (for views such as progress)."""
        engine = crawler.engine
        if engine is None:
            return None
        for middleware in engine.downloader.middleware.middlewares:
            if isinstance(middleware, cls):
                return middleware
        return None

    def held_domains(self) -> set[str]:
        """Domains held back now: slowed by the politeness engine, or unreachable."""
        held = self.breaker.open_keys()
        if self.politeness is not None:
            held |= self.politeness.slowed_keys()
        return held

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self | RefusedComponent:
        try:
            return cls(crawler)
        except SettingsError as exc:
            return RefusedComponent(crawler, exc)
        except _compat.IncompatibleError as exc:
            return RefusedComponent(crawler, exc, INCOMPATIBLE_REASON)

    # -- lifecycle -------------------------------------------------------------

    async def _spider_opened(self) -> None:
        self._log_filter.install()
        self.dispatch.refresh()
        self._watcher = asyncio.create_task(self._housekeeping())

    async def _spider_closed(self) -> None:
        self._begin_closing()
        if self._watcher is not None:
            self._watcher.cancel()
            with suppress(asyncio.CancelledError):
                await self._watcher
        await self._shutdown.cancel_in_flight()
        await self.client.close()
        self._log_filter.remove()
        self._flush_stats()

    def _flush_stats(self) -> None:
        stats = self._stats
        self._buffer.flush(stats)
        stats.max_value("asyncfetch/peak_in_flight", self.limiter.peak_in_flight)

    async def _housekeeping(self) -> None:
        """Every second: publish stats and note which signals have receivers.
        And bound a graceful shutdown: Scrapy waits for every request in flight
        before closing, which could take a full DOWNLOAD_TIMEOUT. Give them
        ASYNCFETCH_SHUTDOWN_TIMEOUT seconds, then cancel the rest."""
        for tick in itertools.count(1):
            if _compat.engine_closing(self.crawler):
                break
            await asyncio.sleep(0.2)
            if tick % 5 == 0:
                self._flush_stats()
                self.dispatch.refresh()
        self._begin_closing()
        await self._shutdown.wait_in_flight(self.config.shutdown_timeout)
        await self._shutdown.cancel_in_flight()

    def _begin_closing(self) -> None:
        """From now on nothing new starts: requests waiting for their turn or
        for a ``Retry-After`` end at once as not fetched."""
        self._shutdown.begin()
        self.limiter.close()

    # -- the hot path ----------------------------------------------------------

    async def process_request(self, request: Request) -> Response | None:
        if request.meta.get(META_KEY) is False or urlparse_cached(request).scheme not in SCHEMES:
            return None
        if self._shutdown.closing:
            raise _not_fetched_at_close(request)
        downloader = self.crawler.engine.downloader
        key, slot = _compat.slot_of(downloader, request)
        if self._handed_delays and (delay := self._handed_delays.pop(key, None)) is not None:
            _compat.set_slot_delay(slot, delay)
        request.meta[downloader.DOWNLOAD_SLOT] = key
        # Keep the downloader's view of each slot true, as if the request had
        # gone through it: DownloaderAwarePriorityQueue picks domains by
        # len(slot.active), AutoThrottle and the slot GC read the rest.
        _compat.slot_entered(slot, request)
        # Scrapy sends these when a request enters a download slot and when it
        # leaves the downloader; this request bypasses both.
        self.dispatch.send(signals.request_reached_downloader, request=request)
        try:
            retry_at = request.meta.pop(RETRY_AT_KEY, None)
            if retry_at is not None:
                await self._wait_until(retry_at, request)
            if (
                self.politeness is not None
                and request.meta.get("retry_times")
                and self.politeness.judging(key)
            ):
                await self._wait_for_verdict(key, request)
            response, received = await self._fetch_in_turn(request, key, slot)
            counts = self._buffer.counts
            counts["asyncfetch/responses"] += 1
            counts[f"asyncfetch/response_status_count/{response.status}"] += 1
            counts["asyncfetch/response_bytes"] += received
            # AutoThrottle adjusts slot delays from it.
            self.dispatch.send(signals.response_downloaded, response=response, request=request)
        finally:
            _compat.slot_left(slot, request)
            self.dispatch.send(signals.request_left_downloader, request=request)
        return response

    async def _fetch_in_turn(self, request: Request, key: str, slot: Slot) -> tuple[Response, int]:
        """Wait for the domain's turn, then fetch; a domain found unreachable
        on the way is waited for (briefly) rather than failing the request."""
        hold_until = time.monotonic() + self.config.breaker_hold
        waited = 0.0
        while True:
            if self.breaker.is_open(key):
                await self._wait_for_host(key, request, hold_until)
            try:
                waited += await self.limiter.acquire(key, lambda: self._policy(key, slot))
            except LimiterClosed:
                raise _not_fetched_at_close(request) from None
            try:
                # Checked again at the head of the queue: the crawl may be
                # closing, the breaker may have opened while this request
                # waited, or this may be the probe.
                if self._shutdown.closing:
                    raise _not_fetched_at_close(request)
                admission = self.breaker.admit(key)
                if admission is not Admission.REFUSED:
                    return await self._fetch_with_feedback(
                        request, key, slot, waited, probe=admission is Admission.PROBE
                    )
            finally:
                self.limiter.release(key)

    # -- holding a request: open breaker, politeness verdict, Retry-After ------

    async def _wait_for_host(self, key: str, request: Request, hold_until: float) -> None:
        """Hold a request while ``key``'s breaker is open, as long as its next
        probe is due before ``hold_until`` (ASYNCFETCH_BREAKER_HOLD after the
        request arrived); otherwise fail it fast: the host is not coming back soon."""
        held = False
        while self.breaker.is_open(key):
            now = time.monotonic()
            if now + self.breaker.retry_in(key) > hold_until:
                raise self._unavailable(key, request)
            if not held:
                held = True
                self._buffer.counts["asyncfetch/breaker/held"] += 1
            # Polled: held requests are few and short-lived, and the probe's
            # outcome may come from any request of the domain.
            await self._pause(request, min(0.1, max(hold_until - now, 0.0)))

    async def _pause(self, request: Request, seconds: float) -> None:
        """Sleep ``seconds``, unless the crawl starts closing: then ``request``
        ends at once as not fetched."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._shutdown.started.wait(), seconds)
        if self._shutdown.closing:
            raise _not_fetched_at_close(request)

    async def _wait_for_verdict(self, key: str, request: Request) -> None:
        """Hold a retry (for at most a second) while its domain, newly refusing,
        is still being judged and has requests in flight whose answers will
        decide: sent at once, the retries of an overloaded host's first wave
        would burn their attempts before any evidence is in. (Nothing in
        flight: nothing to wait for.)"""
        politeness = self.politeness
        assert politeness is not None
        deadline = time.monotonic() + _VERDICT_HOLD
        while politeness.judging(key) and self.limiter.active(key) and time.monotonic() < deadline:
            await self._pause(request, 0.01)

    async def _wait_until(self, retry_at: float, request: Request) -> None:
        """Hold a retry until the time its server's ``Retry-After`` asked for
        (at most ASYNCFETCH_BACKOFF_MAX), without holding its domain's queue."""
        seconds = min(retry_at - time.time(), self.config.backoff_max)
        if seconds <= 0:
            return
        self._buffer.counts["asyncfetch/backoff/retry_after_waits"] += 1
        self._buffer.seconds["asyncfetch/backoff/retry_after_seconds"] += seconds
        await self._pause(request, seconds)

    # -- the fetch, and what it tells the breaker and the politeness engine ----

    async def _fetch_with_feedback(
        self, request: Request, key: str, slot: Slot, waited: float, *, probe: bool
    ) -> tuple[Response, int]:
        """Fetch a request that has its place; feed the outcome to the breaker
        and the politeness engine."""
        counts = self._buffer.counts
        counts["asyncfetch/requests"] += 1
        self.sent[key] += 1
        if waited:
            self._buffer.seconds["asyncfetch/wait_seconds"] += waited
        started = _compat.transfer_started(slot, request)
        # Every ending tells the breaker something, or explicitly nothing: a
        # probe must never be left pending.
        reach = Reach.UNKNOWN
        try:
            response, received = await self._fetch_cancellable(request)
            reach = Reach.REACHED
        except Exception as exc:
            counts[f"asyncfetch/exceptions/{type(exc).__name__}"] += 1
            if is_connection_failure(exc):
                reach = Reach.UNREACHABLE
            elif not isinstance(exc, CancelledAtCloseError | UnexpectedFetchError):
                reach = Reach.REACHED  # connected, then failed: the host is there
            raise
        finally:
            _compat.transfer_ended(slot, request)
            if self.breaker.record(key, reach, probe=probe):
                counts["asyncfetch/breaker/opened"] += 1
                logger.warning(
                    "%s unreachable %s: next try in %.0f s",
                    key,
                    "again (probe failed)"
                    if probe
                    else f"{self.breaker.threshold} time(s) in a row",
                    self.breaker.retry_in(key),
                )
        if self.politeness is not None:
            self._judge(request, key, slot, started, response)
        return response, received

    def _judge(
        self, request: Request, key: str, slot: Slot, started: float, response: Response
    ) -> None:
        """Feed one answer to the politeness engine; honour its Retry-After for
        the request's own retry."""
        politeness = self.politeness
        assert politeness is not None
        throttled = response.status in RATE_LIMIT_STATUSES
        if not throttled and key not in politeness:
            return  # the hot path: a healthy domain
        if throttled:
            retry_after = parse_retry_after(response.headers.get(b"Retry-After"))
            if retry_after is not None:
                # Copied into the retry's meta by RetryMiddleware.
                request.meta[RETRY_AT_KEY] = time.time() + min(retry_after, self.config.backoff_max)
        slowed = politeness.is_slowed(key)
        cut = politeness.answered(
            key,
            started=started,
            throttled=throttled,
            first_attempt=not request.meta.get("retry_times"),
            concurrency=self.limiter.active(key),
            cap=self._configured(key, slot).concurrency,
            server_error=not throttled and response.status >= 500,
        )
        if cut is not None:
            self._log_cut(cut, first=not slowed)
        elif not throttled:
            self.limiter.changed(key)  # its limits may have loosened
            if slowed and not politeness.is_slowed(key):
                logger.info("%s is back to its configured caps", key)

    def _log_cut(self, cut: Cut, *, first: bool) -> None:
        self._buffer.counts["asyncfetch/backoff/slowdowns"] += 1
        limits = [f"{cut.rate:.1f} requests/s"] if cut.rate is not None else []
        if cut.concurrency is not None:
            limits.append(f"{cut.concurrency} at a time")
        logger.log(
            logging.INFO if first else logging.DEBUG,
            "Slowing %s: %.0f%% of its recent answers were 429/503; now at most %s",
            cut.key,
            100 * cut.share,
            ", ".join(limits),
        )

    def _unavailable(self, key: str, request: Request) -> HostUnavailableError:
        self._buffer.counts["asyncfetch/breaker/rejected"] += 1
        return HostUnavailableError(
            f"Not fetching {request.url}: {key} is unreachable (circuit breaker open, "
            f"next probe in {self.breaker.retry_in(key):.0f} s)"
        )

    async def _fetch_cancellable(self, request: Request) -> tuple[Response, int]:
        """Fetch, cancellable by the shutdown as a :class:`CancelledAtCloseError`."""
        # Closing cancels the task running this download while it waits here;
        # the cancellation is then taken back and turned into a download error,
        # so Scrapy's machinery finishes the request normally.
        task = asyncio.current_task()
        assert task is not None
        shutdown = self._shutdown
        shutdown.entered(task)
        try:
            return await self.client.fetch(request)
        except asyncio.CancelledError:
            if not shutdown.closed_it(task):
                raise  # cancelled by someone else too: let it through
            raise CancelledAtCloseError(
                f"Fetching {request.url} was cancelled: the crawl is closing"
            ) from None
        except UnexpectedFetchError as exc:
            logger.error(
                "Unexpected error fetching %s, reported as DownloadFailedError",
                request,
                exc_info=exc.__cause__,
            )
            raise
        finally:
            shutdown.left(task)

    # -- cluster mode: a domain handed from worker to worker -------------------

    def export_domain(self, key: str) -> tuple[str, float]:
        """``key``'s politeness and breaker state (JSON; "" when at its configured caps)
        and the seconds until its next request may start, for the worker that leases
        the domain next. Called once nothing of it is in flight."""
        state: dict[str, object] = {}
        if self.politeness is not None and (decided := self.politeness.export(key)) is not None:
            state["politeness"] = decided
        if (breaker := self.breaker.export(key)) is not None:
            state["breaker"] = breaker
        if self._autothrottle and (slot := self._slot_named(key)) is not None:
            state["autothrottle_delay"] = _compat.slot_limits(slot)[1]
        return (json.dumps(state) if state else ""), self.limiter.remaining_delay(key)

    def restore_domain(self, key: str, state: str) -> None:
        """Take ``key``'s state from :meth:`export_domain` of the worker that leased it
        before ("": none); whatever this worker remembered of it is out of date."""
        decoded = json.loads(state) if state else {}
        if self.politeness is not None:
            self.politeness.restore(key, decoded.get("politeness"))
        self.breaker.restore(key, decoded.get("breaker"))
        delay = decoded.get("autothrottle_delay")
        if self._autothrottle and isinstance(delay, (int, float)):
            # AutoThrottle goes on from the delay it reached, not from its start delay.
            slot = self._slot_named(key)
            if slot is None:
                self._handed_delays[key] = float(delay)
            else:
                _compat.set_slot_delay(slot, float(delay))
        self.limiter.changed(key)

    def _slot_named(self, key: str) -> Slot | None:
        return _compat.slot_named(self.crawler.engine.downloader, key)

    # -- slot limits -----------------------------------------------------------

    def _configured(self, key: str, slot: Slot) -> SlotPolicy:
        """Scrapy's own slot values (DOWNLOAD_SLOTS, CONCURRENT_REQUESTS_PER_DOMAIN,
        DOWNLOAD_DELAY, jitter, AutoThrottle's delay), with ASYNCFETCH_*
        overrides for slots DOWNLOAD_SLOTS does not configure explicitly."""
        own = self._slot_settings.get(key, {})
        concurrency, delay, jitter = _compat.slot_limits(slot)
        per_domain = self.config.concurrent_requests_per_domain
        if per_domain is not None and "concurrency" not in own:
            concurrency = per_domain
        override = self.config.download_delay
        if override is not None and "delay" not in own:
            # AutoThrottle manages slot.delay; the override is then its floor.
            delay = max(delay, override) if self._autothrottle else override
        return SlotPolicy(max(1, concurrency), delay, jitter)

    def _policy(self, key: str, slot: Slot) -> SlotPolicy:
        """The configured limits, tightened by what the politeness engine decided."""
        policy = self._configured(key, slot)
        if self.politeness is None or not self.politeness.is_slowed(key):
            return policy
        limit, interval = self.politeness.limits(key)
        return SlotPolicy(
            policy.concurrency if limit is None else min(policy.concurrency, limit),
            max(policy.delay, interval),
            policy.jitter,
        )


def _not_fetched_at_close(request: Request) -> CancelledAtCloseError:
    return CancelledAtCloseError(f"Not fetching {request.url}: the crawl is closing")
