"""The scheduler of a cluster crawl (``ASYNCFETCH_REDIS_URL`` set, with the add-on).

Scrapy's scheduler API is synchronous; Redis is a network away. So ``enqueue_request``
and ``next_request`` only touch local buffers, and one background task keeps them in
step with the shared frontier, one Lua call per round trip: it records outcomes, pushes
new requests (the cluster-wide duplicate filter runs there), refills or releases the
domains this worker leases, and leases new ones. A second task renews the worker's
lease and reaps those of dead workers; a third reads ``<crawl>:start_urls``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import re
import secrets
import socket
from collections import deque
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Self

import redis.asyncio
from redis.exceptions import RedisError
from scrapy import Request, signals
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.request import request_from_dict

from .. import _compat
from .._config import RefusedComponent, SettingsError, get_int
from ..ledger import ID_KEY, Ledger
from ..middleware import AsyncFetchMiddleware
from . import unsent
from .config import URL_SETTING, ClusterConfig
from .frontier import Frontier, Push, Refill, Settle, SyncBatch, SyncResult
from .keys import Keys
from .local import LocalFrontier

if TYPE_CHECKING:
    from collections.abc import Mapping

    from scrapy import Spider
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

logger = logging.getLogger(__name__)

#: The finish_reason of a worker that cannot reach Redis at start.
REDIS_UNAVAILABLE_REASON = "asyncfetch_redis_unavailable"
#: Pushes, and outcomes, per Lua call at most: Redis runs one script at a time, and a
#: long one holds every other worker up.
MAX_PER_CALL = 500
START_URLS_BATCH = 100
#: How often an idle worker looks for newly leasable domains (seconds).
POLL_INTERVAL = 0.25
MAX_BACKOFF = 10.0


class ClusterScheduler:
    """Set as ``SCHEDULER`` by the add-on when a Redis URL is set."""

    def __init__(self, crawler: Crawler, config: ClusterConfig | None, error: Exception | None):
        self.crawler = crawler
        self.config = config
        self._error = error
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        settings = crawler.settings
        per_domain = settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") or 8
        total = settings.getint("CONCURRENT_REQUESTS") or 16
        # Enough of a domain to keep its cap busy between two refills.
        self.local: LocalFrontier[bytes | Request] = LocalFrontier(batch=max(2, 2 * per_domain))
        #: Requests waiting here at most, beyond which no more domains are leased.
        self._buffer_max = max(2 * total, self.local.batch)
        # Enough domains to fill CONCURRENT_REQUESTS twice over at their caps, no more:
        # the rest are left for other workers.
        self._max_domains = max(1, 2 * -(-total // per_domain))
        self._window = get_int(settings, "ASYNCFETCH_START_WINDOW") or 10_000
        self._out: deque[Push] = deque()
        self._settle: deque[Settle] = deque()
        #: Redirects on their way to the frontier, by id: if one is a duplicate, its
        #: outcome is recorded from it.
        self._redirects: dict[str, Request] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._take_after = 0.0
        self._outstanding: int | None = None
        self._empty_since: float | None = None
        self._start_urls_left = True
        self._closing = False
        self._stopped = False
        self._ids = 0
        self.ledger: Ledger | None = None
        self.frontier: Frontier | None = None
        self._redis: redis.asyncio.Redis | None = None
        #: Closes the spider once open when cluster mode cannot work (held: signals
        #: keep only weak references to their receivers).
        self._refused: RefusedComponent | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        spider_name = crawler.spider.name if crawler.spider is not None else "crawl"
        try:
            return cls(crawler, ClusterConfig.from_settings(crawler.settings, spider_name), None)
        except SettingsError as exc:
            return cls(crawler, None, exc)

    @property
    def spider(self) -> Spider:
        spider = self.crawler.spider
        assert spider is not None
        return spider

    # -- Scrapy's scheduler API ------------------------------------------------

    def open(self, spider: Spider) -> Deferred[None]:
        return deferred_from_coro(self._open())

    def close(self, reason: str) -> None:
        # Only stop reading start_urls: outcomes still come (the ledger settles the
        # last ones in spider_closed), and are written out in our spider_closed handler.
        self._closing = True

    def has_pending_requests(self) -> bool:
        return bool(self.local.waiting or self._out)

    def __len__(self) -> int:
        return self.local.waiting + len(self._out)

    def enqueue_request(self, request: Request) -> bool:
        request_id = request.meta.get(ID_KEY)
        if request_id is None:  # no ledger id: give it one of this worker's own
            self._ids += 1
            request_id = request.meta[ID_KEY] = f"{self.worker}-{self._ids}"
        domain = self.crawler.engine.downloader.get_slot_key(request)
        replace = request_id in self.local
        if replace and request.dont_filter and domain in self.local.held:
            # A retry of a request taken here, for a domain leased here.
            self.local.put_back(domain, request_id, request)
            return True
        # A retry or redirect of a request taken here replaces itself in the frontier,
        # under its id. A redirect is filtered like any new request (as Scrapy's
        # scheduler filters it), a retry (dont_filter) is not.
        fingerprint = (
            ""
            if request.dont_filter
            else self.crawler.request_fingerprinter.fingerprint(request).hex()
        )
        if replace and fingerprint:
            self._redirects[request_id] = request
        self._out.append(Push(request_id, fingerprint, domain, self._encode(request), replace))
        self._wake.set()
        return True

    def next_request(self) -> Request | None:
        item = self.local.pop()
        if self.local.waiting < self._buffer_max // 2:
            self._wake.set()
        if item is None:
            return None
        _, request = item
        if not isinstance(request, Request):
            request = request_from_dict(pickle.loads(request), spider=self.spider)
        assert self.ledger is not None
        self.ledger.taken(request)
        self.crawler.stats.inc_value("asyncfetch/cluster/dispatched")
        return request

    # -- ClusterLink: the ledger's outcomes ------------------------------------

    def outcome(self, ledger_id: str | None, kind: str, record: Mapping[str, Any]) -> None:
        record = {**record, "worker": self.worker}
        key = ledger_id if ledger_id is not None else f"input:{record.get('url')}"
        self._settle.append(Settle(key, kind, json.dumps(record, separators=(",", ":"))))
        if ledger_id is not None:
            self.local.done(ledger_id)
        self._wake.set()

    # -- start and finish --------------------------------------------------------

    async def _open(self) -> None:
        if self.config is None:
            assert self._error is not None
            # Refused once the spider is open: CloseSpider from here would leave the
            # scraper unopened, and its close would fail with a traceback.
            self._refused = RefusedComponent(self.crawler, self._error)
            return
        self.ledger = self.crawler.get_extension(Ledger)
        if self.ledger is None:
            self._refused = RefusedComponent(
                self.crawler, SettingsError("cluster mode needs the Ledger extension")
            )
            return
        config = self.config
        self._redis = redis.asyncio.Redis.from_url(
            config.url, socket_connect_timeout=5, socket_timeout=max(5.0, config.lease / 3)
        )
        self.frontier = Frontier(self._redis, Keys(config.crawl), self.worker, config.lease)
        try:
            await self.frontier.keep()
            await self._replay_unsent()
        except (RedisError, OSError) as exc:
            await self._redis.aclose()
            self._redis = self.frontier = None
            error = ConnectionError(
                f"Cannot reach Redis at {_without_password(config.url)} ({URL_SETTING}): {exc}"
            )
            self._refused = RefusedComponent(self.crawler, error, REDIS_UNAVAILABLE_REASON)
            return
        self.ledger.cluster = self
        logger.info(
            "Cluster crawl %r on %s: this worker is %s",
            config.crawl,
            _without_password(config.url),
            self.worker,
        )
        signals_ = self.crawler.signals
        signals_.connect(self._spider_idle, signal=signals.spider_idle)
        signals_.connect(self._spider_closed, signal=signals.spider_closed)
        for job in (self._sync_loop(), self._keep_loop(), self._start_urls_loop()):
            self._tasks.append(asyncio.get_running_loop().create_task(job))

    def _spider_idle(self) -> None:
        if not self._finished():
            raise DontCloseSpider

    def _finished(self) -> bool:
        """Nothing left here, nor anywhere in the cluster, for the grace period."""
        assert self.config is not None
        if self.config.keep_waiting or self._out or self._settle or self.local.waiting:
            return False
        if self._start_urls_left or self._empty_since is None:
            return False
        return asyncio.get_running_loop().time() - self._empty_since >= self.config.grace

    async def _spider_closed(self) -> None:
        """After the ledger's own spider_closed handler (connected before this one):
        write out the last outcomes, then give back whatever this worker still holds."""
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks)
        frontier = self.frontier
        assert frontier is not None
        assert self.config is not None
        try:
            # Bounded: a Redis gone for good must not hold the close up for ever.
            async with asyncio.timeout(self.config.lease):
                while self._out or self._settle:
                    batch = self._batch(take=False)
                    try:
                        result = await frontier.sync(batch)
                    except BaseException:
                        self._unsent(batch)
                        raise
                    self._apply(batch, result)
                states = self._states(sorted(self.local.held))
                left = await frontier.keep(states, leaving=True)
                stats = await frontier.cluster_stats()
        except (RedisError, OSError, TimeoutError) as exc:
            self._keep_unsent(exc)
        else:
            self._log_cluster(left.requeued, left.outstanding, stats)
        finally:
            self.crawler.stats.set_value("asyncfetch/cluster/round_trips", frontier.calls)
            if self._redis is not None:
                await self._redis.aclose()

    def _unsent_dir(self) -> str:
        """Beside this worker's failures file (its pages directory), else here."""
        assert self.ledger is not None
        return os.path.dirname(self.ledger.path) if self.ledger.path else os.getcwd()

    def _keep_unsent(self, exc: BaseException) -> None:
        """Redis is out of reach at close: keep what it did not get in a file, for the
        next worker of this crawl started on this directory (or the export) to record."""
        assert self.config is not None
        records = unsent.Unsent(
            self.config.crawl,
            self.worker,
            list(self._settle),
            list(self._out),
            self._states(sorted(self.local.held)),
        )
        where = _without_password(self.config.url)
        reason = str(exc) or type(exc).__name__
        counts = f"{len(records.settle)} outcome(s) and {len(records.push)} new request(s)"
        if not records:
            logger.warning(
                "Cannot reach Redis at %s (%s) to close: %s; every outcome was recorded, "
                "and what this worker held goes back once its lease expires",
                where,
                URL_SETTING,
                reason,
            )
            return
        path = unsent.path_for(self._unsent_dir(), self.worker)
        try:
            os.makedirs(path.parent, exist_ok=True)
            unsent.write(path, records)
        except OSError as write_error:
            logger.error(
                "Cannot reach Redis at %s (%s) to close: %s; %s not handed to the cluster, "
                "and they cannot be written to %s either: %s (the outcomes are in this "
                "worker's own files)",
                where,
                URL_SETTING,
                reason,
                counts,
                path,
                write_error,
            )
            return
        logger.error(
            "Cannot reach Redis at %s (%s) to close: %s; %s written to %s, recorded in "
            "the crawl when a worker of it next starts with this directory, or by "
            "scrapy asyncfetch-export --unsent %s",
            where,
            URL_SETTING,
            reason,
            counts,
            path,
            path,
        )

    async def _replay_unsent(self) -> None:
        """Record what workers of this crawl left in this directory when they closed
        without Redis (see :meth:`_keep_unsent`)."""
        assert self.frontier is not None
        directory = self._unsent_dir()
        try:
            files, settled = await unsent.replay_files(
                self.frontier.redis, self.frontier.keys, unsent.find_in(directory)
            )
        except ValueError as exc:  # another crawl's, or damaged: left where it is
            logger.warning("%s", exc)
            return
        if files:
            logger.info(
                "Recorded %d outcome(s) that %d earlier worker(s) could not hand to Redis "
                "when they closed (from %s)",
                settled,
                files,
                directory,
            )

    async def cluster_progress(self) -> tuple[dict[str, int], int] | None:
        """The crawl's totals over every worker and the requests queued or in flight
        anywhere in it (for the progress display), or None while Redis is out of reach."""
        if self.frontier is None or self._outstanding is None:
            return None
        try:
            return await self.frontier.cluster_stats(), self._outstanding
        except (RedisError, OSError):
            return None

    def _log_cluster(self, requeued: int, outstanding: int, totals: dict[str, int]) -> None:
        crawler_stats = self.crawler.stats
        assert crawler_stats is not None
        for name, value in totals.items():
            crawler_stats.set_value(f"asyncfetch/cluster/{name}", value)
        crawler_stats.set_value("asyncfetch/cluster/given_back", requeued)
        assert self.config is not None
        logger.info(
            "Cluster crawl %r, all workers so far: %d requests, %d pages, %d without a page, "
            "%d failures, %d duplicates filtered, %d workers reaped; %d left in the frontier "
            "(%d given back by this worker)",
            self.config.crawl,
            totals.get("requests", 0),
            totals.get("pages", 0),
            totals.get("no_page", 0),
            totals.get("failures", 0),
            totals.get("duplicates", 0),
            totals.get("reaped_workers", 0),
            outstanding,
            requeued,
        )

    # -- the background tasks --------------------------------------------------

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.1
        # A call that failed may have taken requests whose reply never came: they would
        # sit in this worker's in-flight set for ever. Then give back all it holds (what
        # is in flight here is fetched again elsewhere: at least once) and start afresh.
        reclaim = False
        while not self._stopped:
            if reclaim:
                try:
                    await self._give_back()
                except (RedisError, OSError):
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, MAX_BACKOFF)
                    continue
                reclaim = False
            batch = self._batch(take=loop.time() >= self._take_after)
            if not batch:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow the
                # cancellation that stops this task.
                with suppress(TimeoutError):
                    async with asyncio.timeout(POLL_INTERVAL):
                        await self._wake.wait()
                self._wake.clear()
                continue
            try:
                batch, result = await self._sync_once(batch)
            except (RedisError, OSError) as exc:
                self._unsent(batch)
                reclaim = bool(batch.take or batch.refill)
                logger.warning(
                    "Redis (%s) unreachable: %s; retrying in %.1f s", URL_SETTING, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)
                continue
            backoff = 0.1
            self._apply(batch, result)

    async def _sync_once(self, batch: SyncBatch) -> tuple[SyncBatch, SyncResult]:
        assert self.frontier is not None
        return batch, await self.frontier.sync(batch)

    def _batch(self, *, take: bool) -> SyncBatch:
        batch = SyncBatch(batch=self.local.batch)
        while self._settle and len(batch.settle) < MAX_PER_CALL:
            batch.settle.append(self._settle.popleft())
        while self._out and len(batch.push) < MAX_PER_CALL:
            batch.push.append(self._out.popleft())
        for want in self.local.wants():
            state, remaining = self._states([want.domain])[0][1:] if want.idle else ("", 0.0)
            batch.refill.append(Refill(want.domain, want.want, want.idle, state, remaining))
        if take and not self._closing and self.local.waiting < self._buffer_max // 2:
            room = self._max_domains - len(self.local.held)
            batch.take = max(
                0, min(room, (self._buffer_max - self.local.waiting) // self.local.batch)
            )
        return batch

    def _states(self, domains: list[str]) -> list[tuple[str, str, float]]:
        middleware = AsyncFetchMiddleware.of(self.crawler)
        if middleware is None:
            return [(domain, "", 0.0) for domain in domains]
        return [(domain, *middleware.export_domain(domain)) for domain in domains]

    def _unsent(self, batch: SyncBatch) -> None:
        """Put a batch that may not have reached Redis back, to be sent again (the
        script recognises what it applied already)."""
        self._settle.extendleft(reversed(batch.settle))
        self._out.extendleft(reversed(batch.push))

    def _apply(self, batch: SyncBatch, result: SyncResult) -> None:
        ledger = self.ledger
        assert ledger is not None
        stats = self.crawler.stats
        assert stats is not None
        loop = asyncio.get_running_loop()
        if result.reaped:
            self._lost_everything()
        duplicates = set(result.duplicates)
        for push in batch.push:
            redirect = self._redirects.pop(push.id, None) if push.replace else None
            if push.id in duplicates:
                if redirect is None:
                    ledger.cluster_duplicate(push.id)
                else:
                    ledger.redirect_duplicate(redirect)
                stats.inc_value("asyncfetch/cluster/duplicates")
                continue
            ledger.handed_off(push.id)
            if push.replace:
                self.local.done(push.id)
        stats.inc_value("asyncfetch/cluster/pushed", len(batch.push) - len(duplicates))
        for domain in result.lost:
            self.local.release(domain)
            logger.warning("Lost the lease of %s: another worker fetches it now", domain)
        for domain in result.released:
            self.local.release(domain)
        middleware = AsyncFetchMiddleware.of(self.crawler)
        refilled = set()
        for group in result.groups:
            if group.domain not in self.local.held and middleware is not None:
                middleware.restore_domain(group.domain, group.state)
            self.local.add(group.domain, [(rid, payload) for rid, payload in group.requests])
            refilled.add(group.domain)
            stats.inc_value("asyncfetch/cluster/taken", len(group.requests))
        for refill in batch.refill:
            if not refill.idle and refill.domain not in refilled:
                self.local.drained(refill.domain)
        self.local.keep_at_most(min(result.share, self._max_domains))
        if batch.take and not result.groups:
            wait = POLL_INTERVAL if result.next_ready is None else result.next_ready
            self._take_after = loop.time() + min(wait, POLL_INTERVAL)
        self._outstanding = result.outstanding
        if result.outstanding or self.local.taken:
            self._empty_since = None
        elif self._empty_since is None:
            self._empty_since = loop.time()
        if result.groups or self._finished():
            _compat.wake_engine(self.crawler)

    async def _give_back(self) -> None:
        assert self.frontier is not None
        await self.frontier.keep(self._states(sorted(self.local.held)), leaving=True)
        self._lost_everything("Back in touch with Redis")
        await self.frontier.keep()  # registered again, with nothing

    def _lost_everything(
        self, why: str = "This worker's lease expired (ASYNCFETCH_CLUSTER_LEASE)"
    ) -> None:
        logger.warning("%s: the requests it held went back to the frontier", why)
        for domain in list(self.local.held):
            self.local.release(domain)
        for request_id in list(self.local.taken):
            self.local.done(request_id)

    async def _keep_loop(self) -> None:
        assert self.frontier is not None
        assert self.config is not None
        while not self._stopped:
            await asyncio.sleep(self.config.lease / 3)
            try:
                kept = await self.frontier.keep()
            except (RedisError, OSError) as exc:
                logger.warning("Cannot renew this worker's lease in Redis: %s", exc)
                continue
            if kept.was_reaped:
                self._lost_everything()
            if kept.reaped_workers:
                logger.info(
                    "%d worker(s) stopped renewing their lease: %d request(s) they held "
                    "went back to the frontier",
                    kept.reaped_workers,
                    kept.requeued,
                )
                self._wake.set()

    async def _start_urls_loop(self) -> None:
        """Requests from URLs pushed to ``<crawl>:start_urls``, as scrapy-redis's
        spiders make them (``make_request_from_data`` when the spider has it)."""
        assert self.frontier is not None
        spider = self.spider
        make = getattr(spider, "make_request_from_data", None)
        while not self._closing and not self._stopped:
            popped: list[bytes] = []
            if len(self) < self._window // 2:
                try:
                    popped = await self.frontier.pop_start_urls(START_URLS_BATCH)
                except (RedisError, OSError):
                    popped = []  # the sync loop reports Redis trouble
                else:
                    self._start_urls_left = bool(popped)
            for data in popped:
                try:
                    request = make(data) if make is not None else Request(data.decode())
                except (ValueError, TypeError) as exc:
                    text = data.decode(errors="replace")
                    logger.warning(
                        "Skipping %r from %s: %s", text, self.frontier.keys.start_urls, exc
                    )
                    assert self.ledger is not None
                    self.ledger.record_failure(text, "InvalidURL", str(exc))
                    continue
                if request is not None:
                    self.crawler.engine.crawl(request)
            if len(popped) < START_URLS_BATCH:
                await asyncio.sleep(1.0)

    def _encode(self, request: Request) -> bytes:
        return pickle.dumps(request.to_dict(spider=self.spider), protocol=pickle.HIGHEST_PROTOCOL)


def _without_password(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)
