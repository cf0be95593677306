"""Per-domain politeness that follows evidence: pace and cap a domain only when
its own answers say it is rate-limited or overloaded, and only as long as
slowing down is what helps.

Plain Python with an injected clock. The middleware reports every answer
(:meth:`Politeness.answered`) and reads each domain's current limits
(:meth:`Politeness.limits`) into its :class:`~scrapy_asyncfetch._limits.SlotPolicy`.

How a domain is judged:

* **Evidence is a share, not an event.** The last ``window`` answers of a
  domain are kept; it is slowed only when at least ``MIN_THROTTLED`` and at
  least ``threshold`` of them are 429/503 (judged once half a window is in, or
  at once when half of them are, and at least ``2 x MIN_THROTTLED``: a burst
  of refusals). One URL that always
  answers 429 among many 2xx is that URL's problem: RetryMiddleware retries it
  and its domain keeps its pace.
* **Retries alone are no evidence.** Answers to retries never count among first
  attempts', so the same few broken URLs retried at the end of a crawl cannot
  slow (or stall) their domain; a refused retry holds the domain's pace where
  it is. But when only retries are left of a domain paced for a limit and some
  of them are served (pages, not server errors), their refusals are the pace's:
  a refused retry then ends a probe above the pace last set, and two refused
  among the last few retries cut the pace, to no less than half of what first
  attempts last set. So the retries left at the end of a rate-limited crawl do
  not run into the limit at a pace the first attempts ran out before bringing
  down to it, or that probed past it while a token bucket's stored burst hid
  that.
* **The cut aims at what the domain accepted.** The pace (starts per second) is
  cut to ``observed rate x (1 - share)``, at most halved, which for a token
  bucket converges on its refill rate; with adaptive concurrency the cap is cut the same
  way from the most it had in flight, and never left above what the domain
  showed it serves: if its refusals came only at concurrencies above those it
  accepted (a capacity limit), the cap goes just below the lowest refused one,
  and a later probe above it that is refused goes straight back.
* **A cut must help.** After a cut the evidence starts over: only answers to
  requests sent since count. A quarter window of them in, the cut is reviewed:
  at a real limit, slowing down lowers the share refused and keeps the pages
  got per second; if instead the share has not fallen by a fifth while the
  pages per second fell by a fifth, slowing down was not the cure (URLs that
  refuse however slowly they are asked): the cut is undone, and that share
  becomes the domain's baseline, which later judgements look past.
* **Recovery is as quick as the evidence.** Once half a window of answers came
  with a share of 429/503 below the threshold (beyond the baseline), the pace rises each second by
  5% of the rate at which 429/503 began (at least one request per second),
  probing just above a limit, where few 429s are provoked; once half as fast
  again as that and calm for ``2 x window`` answers, it doubles every
  ``window`` answers. The cap rises by one per round, past a known capacity
  only when calm for ``2 x window`` answers. A limit that can no longer bind is
  dropped, and the domain is back to its configured caps.
"""

from __future__ import annotations

import math
import time
from collections import deque
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
    rate: float | None
    concurrency: int | None


class _Domain:
    __slots__ = (
        "accepted_peak",
        "baseline",
        "before_cut",
        "calm",
        "capacity",
        "ceiling",
        "cuts",
        "first_fresh",
        "gap",
        "judged_pace",
        "last_answer",
        "last_cut",
        "latency",
        "level",
        "limit",
        "paced_at",
        "rate",
        "recent",
        "refused_low",
        "retried",
        "retries_served",
        "retry_cut",
        "since_cut",
        "throttled",
        "throttled_since_cut",
    )

    def __init__(self, window: int) -> None:
        #: The last answers to first attempts: when, and True for a 429/503.
        self.recent: deque[tuple[float, bool]] = deque(maxlen=window)
        self.throttled = 0  # how many of them
        #: The share of refusals that slowing down did not lower (broken URLs).
        self.baseline = 0.0
        #: Answers in a row with no more refusals than the baseline allows.
        self.calm = 0
        #: Paced starts per second, or None: not paced.
        self.rate: float | None = None
        #: The pace the last judgement set, from which recovery probes upwards.
        self.paced_at = math.inf
        #: The pace the last judgement of first attempts set: retries can at
        #: most halve it.
        self.judged_pace = math.inf
        #: Adapted concurrency cap, or None: the configured cap.
        self.limit: float | None = None
        #: The observed rate at the last cut: where 429/503 began.
        self.ceiling = 0.0
        #: The concurrency at which a capacity limit began refusing, once found.
        self.capacity: int | None = None
        self.last_cut = -math.inf
        self.cuts = 0
        # The last cut, kept until it is reviewed: the share refused and the
        # pages a second then (None: unknown), the limits before it; and the
        # answers to requests sent since, from when the first came.
        self.before_cut: tuple[float, float | None, float | None, float | None] | None = None
        self.first_fresh = 0.0
        self.since_cut = 0
        self.throttled_since_cut = 0
        # Answers to retries sent since the last cut and since the last first
        # attempt: how many were served, and the last few (True: refused).
        self.retries_served = 0
        self.retried: deque[bool] = deque(maxlen=max(2 * MIN_THROTTLED, window // 4))
        self.retry_cut = -math.inf
        # Since the last cut: the most in flight at once, and the highest and
        # lowest concurrency at which an answer was served or refused.
        self.level = 0
        self.accepted_peak = 0
        self.refused_low = math.inf
        # Moving averages: seconds between answers, seconds per answer.
        self.last_answer = -math.inf
        self.gap: float | None = None
        self.latency: float | None = None

    def observed_rate(self) -> float | None:
        return 1 / self.gap if self.gap else None

    def record(self, when: float, throttled: bool) -> None:
        recent = self.recent
        if len(recent) == recent.maxlen and recent[0][1]:
            self.throttled -= 1
        recent.append((when, throttled))
        self.throttled += throttled

    def pages_rate(self) -> float | None:
        """Pages (answers not refused) a second over the window, if it spans any time."""
        recent = self.recent
        span = recent[-1][0] - recent[0][0] if recent else 0.0
        return (len(recent) - self.throttled) / span if span > 0 else None

    def share(self) -> float:
        return self.throttled / len(self.recent) if self.recent else 0.0


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
        #: Answers at the new pace after which a cut is reviewed.
        self._review_after = max(2 * MIN_THROTTLED, window // 4)
        self._clock = clock
        self._domains: dict[str, _Domain] = {}
        self._sweep_at = self._MIN_SWEEP

    def __contains__(self, key: str) -> bool:
        """Does ``key`` have state (it answered 429/503 lately)?"""
        return key in self._domains

    def limits(self, key: str) -> tuple[int | None, float]:
        """``key``'s adapted concurrency cap (None: the configured one) and the
        least seconds between its starts (0: not paced)."""
        domain = self._domains.get(key)
        if domain is None:
            return None, 0.0
        limit = None if domain.limit is None else max(1, int(domain.limit))
        return limit, (1 / domain.rate if domain.rate else 0.0)

    def judging(self, key: str) -> bool:
        """Is ``key`` newly refusing and not judged yet (its first 429/503 came,
        too few answers since to decide)?"""
        domain = self._domains.get(key)
        return domain is not None and not domain.cuts and len(domain.recent) < self.window // 2

    def is_slowed(self, key: str) -> bool:
        domain = self._domains.get(key)
        return domain is not None and (domain.rate is not None or domain.limit is not None)

    def slowed_keys(self) -> set[str]:
        """The keys paced or capped below their configuration now."""
        return {key for key in self._domains if self.is_slowed(key)}

    def answered(
        self,
        key: str,
        *,
        started: float,
        throttled: bool,
        first_attempt: bool,
        concurrency: int,
        cap: int,
        server_error: bool = False,
    ) -> Cut | None:
        """Take one answer of ``key``: a request that started at ``started``
        (clock time) with ``concurrency`` requests of its domain in flight
        (itself included), under a configured cap of ``cap``; ``server_error``
        for an answer that is neither refused nor a page (500, 504...). Return
        the cut it causes, if any; otherwise the domain may speed up."""
        domain = self._domains.get(key)
        if domain is None:
            if not (throttled and first_attempt):
                return None  # the common case: a healthy domain keeps no state
            if len(self._domains) >= self._sweep_at:
                self._sweep()
            domain = self._domains[key] = _Domain(self.window)
        now = self._clock()
        if domain.last_answer > -math.inf:
            domain.gap = _average(domain.gap, now - domain.last_answer)
        domain.last_answer = now
        domain.latency = _average(domain.latency, now - started)
        if not first_attempt:
            if server_error:
                return None  # a retry's own failure: no sign its refusal was the pace's
            return self._retried(key, domain, now, started, throttled)
        if started <= domain.last_cut:
            return None  # sent before the last cut: it says nothing of the current pace
        domain.record(now, throttled)
        # First attempts are the evidence while they last: retries judge only
        # the run of them that follows (at the end of a crawl, all that is left).
        domain.retries_served = 0
        domain.retried.clear()
        if not domain.since_cut:
            domain.first_fresh = now
        domain.since_cut += 1
        domain.throttled_since_cut += throttled
        if domain.before_cut is not None and domain.since_cut >= self._review_after:
            self._review_cut(domain, now)
        domain.level = max(domain.level, concurrency)
        if domain.share() - domain.baseline >= self.threshold:
            domain.calm = 0
        else:
            domain.calm += 1
        if throttled:
            domain.refused_low = min(domain.refused_low, concurrency)
            capacity = domain.capacity
            if capacity is not None and concurrency >= capacity:
                # A probe above the capacity found earlier failed: straight back
                # below it, before the refused request's retry goes out.
                domain.limit = min(domain.limit or cap, capacity - 1.0)
            return self._judge(key, domain, now, cap)
        domain.accepted_peak = max(domain.accepted_peak, concurrency)
        self._speed_up(key, domain, cap)
        return None

    def _retried(
        self,
        key: str,
        domain: _Domain,
        now: float,
        started: float,
        throttled: bool,
    ) -> Cut | None:
        """Take an answer to a retry. Retries alone are no evidence: the same
        few broken URLs retried at the end of a crawl must never slow their
        domain. But while only retries come (none of its first attempts since)
        and some of them are served, on a domain paced for a limit (not one
        whose refusals slowing down did not cure), their refusals are the
        pace's: a refused retry ends a probe above the pace last set, and two
        refused among the last few retries cut the pace as first attempts
        would, never below half the pace first attempts last set (the most
        refusals that no pace cures, such as a flaky URL's, can cost). So the
        retries left at the end of a crawl do not run into the limit at a pace
        that first attempts ran out before bringing down to it, or that a probe
        took past it while a token bucket's stored burst hid that."""
        if throttled:
            domain.calm = 0  # refused lately: the pace holds
        rate = domain.rate
        if rate is None or domain.baseline or started <= max(domain.last_cut, domain.retry_cut):
            return None
        domain.retries_served += not throttled
        domain.retried.append(throttled)
        if not throttled or domain.retries_served < MIN_THROTTLED:
            return None
        rate = domain.rate = min(rate, domain.paced_at)
        refused = sum(domain.retried)
        if refused < MIN_THROTTLED:
            return None
        share = refused / len(domain.retried)
        observed = domain.observed_rate()
        current = rate if observed is None else min(observed, rate)
        cut_to = max(self.min_rate, domain.judged_pace / 2, current * max(0.5, 1 - share))
        if cut_to >= rate:
            return None  # as slow as retries can make it
        domain.rate = domain.paced_at = cut_to
        domain.retries_served = 0
        domain.retried.clear()
        domain.retry_cut = now
        limit = None if domain.limit is None else max(1, int(domain.limit))
        return Cut(key, share, cut_to, limit)

    def _review_cut(self, domain: _Domain, now: float) -> None:
        """A quarter window after a cut: at a real limit, slowing down lowered
        the share refused and kept the pages got per second. If instead the
        share held while the pages per second fell, slowing down was not the
        cure: undo the cut, and take that share as the domain's baseline. (Not
        for a domain's first cut, nor one made at over 60% refused: a start, or
        a blast far over a real limit, is too noisy to tell.)"""
        assert domain.before_cut is not None
        cut_at, pages_at, rate, limit = domain.before_cut
        domain.before_cut = None
        share = domain.throttled_since_cut / domain.since_cut
        elapsed = now - domain.first_fresh
        if domain.cuts < 2 or cut_at > 0.6 or not pages_at or elapsed <= 0:
            return
        if share < 0.8 * cut_at:
            return
        served = domain.since_cut - domain.throttled_since_cut
        if served / elapsed < 0.8 * pages_at:
            domain.rate, domain.limit = rate, limit
            domain.paced_at = domain.judged_pace = math.inf if rate is None else rate
            domain.baseline = share

    def _judge(self, key: str, domain: _Domain, now: float, cap: int) -> Cut | None:
        if domain.before_cut is not None:
            return None  # the last cut is not reviewed yet
        refused, answers = domain.throttled, len(domain.recent)
        if answers < self.window // 2 and refused < max(2 * MIN_THROTTLED, answers / 2):
            return None  # too little evidence yet, unless it is a burst of refusals
        share = refused / answers
        excess = share - domain.baseline
        if refused < MIN_THROTTLED or excess < self.threshold:
            return None
        return self._cut(key, domain, now, cap, share=share, excess=excess)

    def _cut(
        self, key: str, domain: _Domain, now: float, cap: int, *, share: float, excess: float
    ) -> Cut | None:
        factor = max(0.5, 1 - excess)
        before = (share, domain.pages_rate(), domain.rate, domain.limit)
        observed = domain.observed_rate()
        current = domain.rate if observed is None else min(observed, domain.rate or observed)
        if current is not None:  # None: answers so far came all at once, no rate yet
            domain.ceiling = current
            domain.rate = max(self.min_rate, current * factor)
        elif not self.adaptive_concurrency:
            return None
        if self.adaptive_concurrency:
            running_at = min(domain.level, cap if domain.limit is None else domain.limit)
            limit = running_at * factor
            if 0 < domain.accepted_peak < domain.refused_low:  # served below, refused above
                domain.capacity = int(domain.refused_low)
                limit = min(limit, domain.capacity - 1)
            domain.limit = max(1.0, limit)
        domain.paced_at = domain.judged_pace = math.inf if domain.rate is None else domain.rate
        domain.before_cut = before
        domain.since_cut = domain.throttled_since_cut = 0
        domain.retries_served = 0
        domain.retried.clear()
        # The evidence starts over: the window holds answers at the new pace only.
        domain.recent.clear()
        domain.throttled = 0
        domain.last_cut = now
        domain.cuts += 1
        domain.accepted_peak, domain.refused_low, domain.level = 0, math.inf, 0
        cut_to = None if domain.limit is None else max(1, int(domain.limit))
        return Cut(key, share, domain.rate, cut_to)

    def _speed_up(self, key: str, domain: _Domain, cap: int) -> None:
        if domain.calm < self.window // 2:
            return  # refused lately: hold the pace where it is
        long_calm = domain.calm >= 2 * self.window
        if domain.rate is not None:
            if long_calm and domain.rate > 1.5 * domain.ceiling:
                # Long calm, well past where 429/503 began: the limit has gone.
                domain.rate *= 1 + 1 / self.window
            else:
                # Probe: up by 5% of the ceiling (at least 1/s) each second.
                domain.rate += max(1.0, domain.ceiling / 20) / max(domain.rate, 1.0)
            # A pace the concurrency cap already keeps it under can go.
            limit = cap if domain.limit is None else domain.limit
            if domain.latency and domain.rate * domain.latency > 2 * limit:
                domain.rate = None
        if domain.limit is not None:
            below_capacity = domain.capacity is None or domain.limit + 1 < domain.capacity
            if below_capacity or long_calm:
                domain.limit += 1 / domain.limit  # past a known capacity: only when long calm
            if domain.limit >= cap:
                domain.limit = None
        recovered = domain.rate is None and domain.limit is None
        if recovered and not domain.throttled and not domain.baseline:
            del self._domains[key]  # back to the configured caps, nothing to remember

    def export(self, key: str) -> dict[str, float | None] | None:
        """``key``'s decisions (pace, cap, what it learnt of the domain's limits), for
        another process to :meth:`restore`; None: the domain is at its configured caps.
        The evidence window is not handed over: the next process judges afresh."""
        domain = self._domains.get(key)
        if domain is None:
            return None
        state: dict[str, float | None] = {}
        for name in _EXPORTED:
            value = getattr(domain, name)
            state[name] = None if value == math.inf else value
        return state

    def restore(self, key: str, state: dict[str, float | None] | None) -> None:
        """Take ``key``'s decisions from :meth:`export` (None: forget the domain)."""
        self._domains.pop(key, None)
        if state is None:
            return
        domain = self._domains[key] = _Domain(self.window)
        for name in _EXPORTED:
            value = state.get(name)
            if name in _INFINITE_WHEN_NONE and value is None:
                value = math.inf
            if name == "cuts":
                value = int(value or 0)
            if name == "capacity" and value is not None:
                value = int(value)
            setattr(domain, name, value)

    def _sweep(self) -> None:
        for key in [k for k, d in self._domains.items() if d.rate is None and d.limit is None]:
            del self._domains[key]
        self._sweep_at = max(self._MIN_SWEEP, 2 * len(self._domains))


#: What a domain's state hands over: its limits, and what is known of the domain's own.
_EXPORTED = (
    "rate",
    "limit",
    "ceiling",
    "capacity",
    "baseline",
    "paced_at",
    "judged_pace",
    "cuts",
)
_INFINITE_WHEN_NONE = frozenset({"paced_at", "judged_pace"})


def _average(mean: float | None, sample: float) -> float:
    return sample if mean is None else mean + _EWMA * (sample - mean)
