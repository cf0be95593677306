"""Per-domain politeness that follows evidence: pace and cap a domain only when
its own answers say it is rate-limited or overloaded.

Plain Python with an injected clock. The middleware reports every answer
(:meth:`Politeness.answered`) and reads each domain's current limits
(:meth:`Politeness.limits`) into its :class:`~scrapy_asyncfetch.limits.SlotPolicy`.

How a domain is judged:

* **Evidence is a share, not an event.** The last ``window`` answers to first
  attempts of a domain's requests are kept (as bits); the domain is slowed only
  when at least ``MIN_THROTTLED`` of them and at least ``threshold`` of them are
  429/503. One URL that always answers 429 among many 2xx is that URL's problem:
  RetryMiddleware retries it and its domain keeps its pace.
* **Retries are no evidence.** Answers to retries never count, so the same few
  broken URLs retried at the end of a crawl cannot slow (or stall) their domain;
  nor do they speed it up, so retries left at the end of a rate-limited crawl
  keep the pace the first attempts found.
* **One cut per round trip.** A cut is decided only by answers to requests that
  started after the previous cut: answers already in flight describe the old pace.
* **The cut aims at what the domain accepted.** The pace (starts per second) is
  cut to ``observed rate x (1 - share)``, at most halved, which for a token
  bucket is its refill rate; with adaptive concurrency the cap is cut the same
  way from the concurrency at which the throttled request was sent.
* **Recovery is as quick as the evidence.** After a cut the pace rises each
  second by 5% of the rate at which 429/503 began (at least one request per
  second), probing just above the limit, where few 429s are provoked; once it
  is half as fast again as that and ``2 x window`` first attempts in a row were
  answered without 429/503, each answer raises it by ``1/window`` (it doubles in
  about ``window`` answers). With no 429/503 left in the window the cap rises by one
  per round. A limit that can no longer bind is dropped, and the domain is back
  to its configured caps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Statuses that mean "slow down".
RATE_LIMIT_STATUSES = frozenset({429, 503})
#: Fewest 429/503 answers in the window that can slow a domain.
MIN_THROTTLED = 2
#: Weight of the newest sample in the moving averages of answer gaps and latency.
_EWMA = 0.2


def parse_retry_after(value: bytes | str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date),
    or None when it is missing, unparsable, or not in the future."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return seconds if seconds > 0 else None


@dataclass(frozen=True, slots=True)
class Cut:
    """A decision to slow a domain, for stats and the log."""

    key: str
    share: float
    rate: float
    concurrency: int | None


class _Domain:
    __slots__ = (
        "answers",
        "bits",
        "ceiling",
        "clean_streak",
        "gap",
        "last_answer",
        "last_cut",
        "latency",
        "limit",
        "rate",
    )

    def __init__(self) -> None:
        #: The last answers to first attempts, newest in bit 0: 1 = 429/503.
        self.bits = 0
        self.answers = 0  # how many of those bits are real (up to the window)
        #: First attempts answered without 429/503 since the last that was.
        self.clean_streak = 0
        self.last_cut = -math.inf
        #: Paced starts per second, or None: not paced.
        self.rate: float | None = None
        #: The observed rate at the last cut: where 429/503 began.
        self.ceiling = 0.0
        #: Adapted concurrency cap, or None: the configured cap.
        self.limit: float | None = None
        # Moving averages: seconds between answers, seconds per answer.
        self.last_answer = -math.inf
        self.gap: float | None = None
        self.latency: float | None = None

    def observed_rate(self) -> float | None:
        return 1 / self.gap if self.gap else None


class Politeness:
    """Decides, per domain, a pace (starts per second) and a concurrency cap
    from the domain's own answers.

    ``min_rate`` is the slowest pace a domain can be cut to;
    ``adaptive_concurrency`` also adapts the cap (otherwise only the pace).
    """

    _MIN_SWEEP = 256

    def __init__(
        self,
        *,
        window: int = 20,
        threshold: float = 0.15,
        min_rate: float = 1 / 120,
        adaptive_concurrency: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < MIN_THROTTLED:
            raise ValueError(f"the window must hold at least {MIN_THROTTLED} answers")
        self.window = window
        self.threshold = threshold
        self.min_rate = min_rate
        self.adaptive_concurrency = adaptive_concurrency
        self._mask = (1 << window) - 1
        self._clock = clock
        self._domains: dict[str, _Domain] = {}
        self._sweep_at = self._MIN_SWEEP

    def __contains__(self, key: str) -> bool:
        """Does ``key`` have state (recent 429/503, or limits of its own)?"""
        return key in self._domains

    def limits(self, key: str) -> tuple[int | None, float]:
        """``key``'s adapted concurrency cap (None: the configured one) and the
        least seconds between its starts (0: not paced)."""
        domain = self._domains.get(key)
        if domain is None:
            return None, 0.0
        limit = None if domain.limit is None else max(1, int(domain.limit))
        return limit, (1 / domain.rate if domain.rate else 0.0)

    def is_slowed(self, key: str) -> bool:
        domain = self._domains.get(key)
        return domain is not None and (domain.rate is not None or domain.limit is not None)

    def answered(
        self,
        key: str,
        *,
        started: float,
        throttled: bool,
        first_attempt: bool,
        concurrency: int,
        cap: int,
    ) -> Cut | None:
        """Take one answer of ``key``: a request that started at ``started``
        (clock time) with ``concurrency`` requests of its domain in flight
        (itself included), under a configured cap of ``cap``. Return the cut
        it causes, if any; otherwise the domain may speed up."""
        domain = self._domains.get(key)
        if domain is None:
            if not throttled:
                return None  # the common case: a healthy domain keeps no state
            if len(self._domains) >= self._sweep_at:
                self._sweep()
            domain = self._domains[key] = _Domain()
        now = self._clock()
        if domain.last_answer > -math.inf:
            domain.gap = _average(domain.gap, now - domain.last_answer)
        domain.last_answer = now
        domain.latency = _average(domain.latency, now - started)
        if first_attempt:
            domain.bits = ((domain.bits << 1) | throttled) & self._mask
            domain.answers = min(self.window, domain.answers + 1)
            domain.clean_streak = 0 if throttled else domain.clean_streak + 1
        if not first_attempt:
            return None  # retries are no evidence, either way
        if throttled:
            return (
                self._maybe_cut(key, domain, now, concurrency, cap)
                if started > domain.last_cut
                else None
            )
        self._speed_up(key, domain, cap)
        return None

    def _maybe_cut(
        self, key: str, domain: _Domain, now: float, concurrency: int, cap: int
    ) -> Cut | None:
        throttled = domain.bits.bit_count()
        share = throttled / domain.answers
        # A domain first seen at a 429 has no history: half a window of it first.
        if domain.answers < self.window // 2 or throttled < MIN_THROTTLED or share < self.threshold:
            return None
        factor = max(0.5, 1 - share)
        observed = domain.observed_rate()
        current = domain.rate if observed is None else min(observed, domain.rate or observed)
        if current is None:
            return None  # no second answer yet: no rate to cut from
        domain.ceiling = current
        domain.rate = max(self.min_rate, current * factor)
        if self.adaptive_concurrency:
            sent_at = min(concurrency, cap if domain.limit is None else domain.limit)
            domain.limit = max(1.0, sent_at * factor)
        domain.last_cut = now
        limit = None if domain.limit is None else max(1, int(domain.limit))
        return Cut(key, share, domain.rate, limit)

    def _speed_up(self, key: str, domain: _Domain, cap: int) -> None:
        clean = not domain.bits
        if domain.rate is not None:
            if domain.clean_streak >= 2 * self.window and domain.rate > 1.5 * domain.ceiling:
                # Long clean, well past where 429/503 began: the limit has gone.
                domain.rate *= 1 + 1 / self.window
            else:
                # Probe: up by 5% of the ceiling (at least 1/s) each second.
                domain.rate += max(1.0, domain.ceiling / 20) / max(domain.rate, 1.0)
            # A pace the concurrency cap already keeps it under can go.
            limit = cap if domain.limit is None else domain.limit
            if domain.latency and domain.rate * domain.latency > 2 * limit:
                domain.rate = None
        if domain.limit is not None and clean:
            domain.limit += 1 / domain.limit
            if domain.limit >= cap:
                domain.limit = None
        if clean and domain.rate is None and domain.limit is None:
            del self._domains[key]  # fully recovered: back to the configured caps

    def _sweep(self) -> None:
        for key in [k for k, d in self._domains.items() if d.rate is None and d.limit is None]:
            del self._domains[key]
        self._sweep_at = max(self._MIN_SWEEP, 2 * len(self._domains))


def _average(mean: float | None, sample: float) -> float:
    return sample if mean is None else mean + _EWMA * (sample - mean)
