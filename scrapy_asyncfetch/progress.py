"""Live progress: a bar on a terminal, a periodic line everywhere else.

On a terminal the bar (tqdm) sits under the log: log records are written above it, never
through it. Elsewhere (scrapyd, CI, a redirected log) one INFO line every
``LOGSTATS_INTERVAL`` seconds carries the same numbers, in place of Scrapy's "Crawled N
pages" line, which the add-on turns off while this is on. Both read the crawl's state a few
times a second, never per request, so they cost the crawl nothing measurable.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Self

from scrapy import signals
from scrapy.exceptions import NotConfigured

from ._accounting import Accounts
from ._cluster.scheduler import ClusterScheduler
from ._config import SettingsError, get_choice
from .ledger import Ledger
from .middleware import AsyncFetchMiddleware

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

MODES = ("auto", "bar", "line", "off")
#: Seconds between two refreshes of the bar.
BAR_REFRESH = 0.5
#: Seconds of history the rate is measured over: long enough to smooth bursts, short
#: enough to follow a crawl that slows down.
RATE_WINDOW = 10.0


class RateMeter:
    """Outcomes per second over the last ``window`` seconds (plain Python, injected clock)."""

    def __init__(self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, count: int) -> float | None:
        """Record the running total *count* now; return the rate, None until measurable."""
        now = self._clock()
        samples = self._samples
        samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        first_time, first_count = samples[0]
        if now - first_time <= 0:
            return None
        return (count - first_count) / (now - first_time)


@dataclass
class Snapshot:
    """The numbers progress shows, read from the crawl at one moment."""

    done: int  # requests with an outcome: page, no page, or failure
    pages: int
    total: int | None  # known from the spider (e.g. lines of a URL file), else None
    entered: int  # requests that entered the scheduler so far
    in_flight: int
    queued: int
    held_domains: int
    failures: Counter[str] = field(default_factory=Counter)
    rate: float | None = None

    @property
    def eta(self) -> float | None:
        if self.total is None or not self.rate:
            return None
        return max(self.total - self.done, 0) / self.rate

    def line(self) -> str:
        if self.total is not None:
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            parts = [f"{self.done:,}/{self.total:,} done{share}"]
        else:
            parts = [f"{self.done:,} done of {self.entered:,} scheduled so far"]
        parts.append(f"{self.pages:,} pages written")
        parts.append(f"{self.rate:,.1f}/s" if self.rate is not None else "-/s")
        parts.append(f"{self.in_flight} in flight, {self.queued:,} queued")
        parts.append(f"{sum(self.failures.values()):,} failed{_reasons(self.failures)}")
        parts.append(f"{self.held_domains} domain(s) held")
        if (eta := self.eta) is not None:
            parts.append(f"ETA {_duration(eta)}")
        return ", ".join(parts)


def _reasons(failures: Counter[str], most: int = 3) -> str:
    if not failures:
        return ""
    shown = ", ".join(f"{reason} {count:,}" for reason, count in failures.most_common(most))
    more = len(failures) - most
    return f" ({shown}{f', +{more} more' if more > 0 else ''})"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _cover_cluster(snapshot: Snapshot, totals: dict[str, int], outstanding: int) -> None:
    """Make ``snapshot`` the whole cluster crawl's: outcomes over every worker, and a total
    known from the frontier (what has an outcome plus what is queued or in flight anywhere).
    Failure reasons are known for this worker's own failures only."""
    failed = totals.get("failures", 0)
    snapshot.done = totals.get("pages", 0) + totals.get("no_page", 0) + failed
    snapshot.pages = totals.get("pages", 0)
    snapshot.total = snapshot.done + outstanding
    snapshot.queued = outstanding
    elsewhere = failed - sum(snapshot.failures.values())
    if elsewhere > 0:
        snapshot.failures["on other workers"] = elsewhere


class _AboveTheBar:
    """A log handler's stream that writes each record above the bar, then redraws it."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        from tqdm import tqdm  # noqa: PLC0415

        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """The extension: ``ASYNCFETCH_PROGRESS`` = ``auto`` (bar on a terminal, line
    otherwise), ``bar``, ``line`` or ``off``.

    The total comes from the spider's ``progress_total`` attribute when it sets one
    (the example project's ``pages`` spider counts its URL file); otherwise the requests
    that entered the scheduler so far stand in for it, and there is no ETA.
    """

    def __init__(self, crawler: Crawler, mode: str, interval: float) -> None:
        self.crawler = crawler
        self.mode = mode
        self.interval = interval
        self.meter = RateMeter()
        self._task: asyncio.Task[None] | None = None
        self._bar: Any = None
        self._redirected: list[tuple[logging.StreamHandler[Any], IO[str]]] = []
        crawler.signals.connect(self._opened, signal=signals.spider_opened)
        crawler.signals.connect(self._closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        try:
            mode = get_choice(settings, "ASYNCFETCH_PROGRESS", MODES)
        except SettingsError as exc:
            # Progress is a view: a bad value must not stop a crawl, only be named.
            logger.error("%s; showing no progress", exc)
            raise NotConfigured(str(exc)) from None
        if mode == "off":
            raise NotConfigured("ASYNCFETCH_PROGRESS is off")
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "line"
        interval = settings.getfloat("LOGSTATS_INTERVAL") if mode == "line" else BAR_REFRESH
        if interval <= 0:
            raise NotConfigured("LOGSTATS_INTERVAL is 0: no progress line")
        return cls(crawler, mode, interval)

    def snapshot(self, cluster: tuple[dict[str, int], int] | None = None) -> Snapshot:
        """The numbers now: this process's, or with ``cluster`` (the crawl's totals over
        every worker and the requests outstanding in its frontier) the whole crawl's."""
        crawler = self.crawler
        ledger = crawler.get_extension(Ledger)
        accounts = ledger.accounts if ledger is not None else Accounts()
        # Every input with an outcome: a page, a response without one, a failure (invalid
        # inputs included), or a duplicate filtered out.
        done = (
            accounts.pages
            + sum(accounts.failures.values())
            + accounts.no_page
            + accounts.duplicates
        )
        engine = crawler.engine
        in_flight = len(engine.downloader.active) if engine is not None else 0
        queued = 0
        if engine is not None and engine.scheduler is not None:
            try:
                queued = len(engine.scheduler)  # type: ignore[arg-type]
            except TypeError:
                queued = 0  # a scheduler without a length
        middleware = AsyncFetchMiddleware.of(crawler)
        total = getattr(crawler.spider, "progress_total", None)
        snapshot = Snapshot(
            done=done,
            pages=accounts.pages,
            total=total if isinstance(total, int) else None,
            entered=accounts.entered,
            in_flight=in_flight,
            queued=queued,
            held_domains=len(middleware.held_domains()) if middleware is not None else 0,
            failures=Counter(accounts.failures),
        )
        if cluster is not None:
            _cover_cluster(snapshot, *cluster)
        snapshot.rate = self.meter.add(snapshot.done)
        return snapshot

    async def _current(self) -> Snapshot:
        engine = self.crawler.engine
        scheduler = engine.scheduler if engine is not None else None
        if isinstance(scheduler, ClusterScheduler):
            return self.snapshot(await scheduler.cluster_progress())
        return self.snapshot()

    def _opened(self) -> None:
        if self.mode == "bar":
            self._start_bar()
        # At once, as LogStats logs its first "Crawled 0 pages" line when the spider opens:
        # code that reads the log counts while start() runs finds the same INFO record.
        self.show(self.snapshot())
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.show(await self._current())

    def show(self, snapshot: Snapshot) -> None:
        if self._bar is None:
            logger.info("Progress: %s", snapshot.line())
            return
        bar = self._bar
        bar.total = snapshot.total if snapshot.total is not None else snapshot.entered
        bar.n = snapshot.done
        bar.set_description_str(snapshot.line(), refresh=False)
        bar.refresh()

    def _start_bar(self) -> None:
        from tqdm import tqdm  # noqa: PLC0415

        stream = sys.stderr
        self._bar = tqdm(
            total=0,
            file=stream,
            dynamic_ncols=True,
            bar_format="{percentage:3.0f}%|{bar:20}| {desc}",
            leave=True,
        )
        # Every console handler of the root logger (where Scrapy's is) writes above the bar.
        for handler in logging.root.handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (
                sys.stderr,
                sys.stdout,
            ):
                self._redirected.append((handler, handler.stream))
                handler.setStream(_AboveTheBar(handler.stream))

    def _closed(self) -> None:
        if self._task is not None:
            self._task.cancel()
        final = self.snapshot()
        if self._bar is not None:
            self.show(final)
            self._bar.close()
            for handler, stream in self._redirected:
                handler.setStream(stream)
            self._redirected.clear()
        else:
            logger.info("Progress: %s", final.line())
