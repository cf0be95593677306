"""Per-domain backoff on rate limiting, and a per-domain circuit breaker.

Plain Python: the middleware feeds them outcomes and applies what they decide
(pauses go to the :class:`~scrapy_asyncfetch.limits.Limiter`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

#: Statuses that mean "slow down".
RATE_LIMIT_STATUSES = frozenset({429, 503})


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


class Backoff:
    """Decides how long a rate-limited domain pauses.

    Each *event* steps the domain's level up, doubling the pause (from the
    server's ``Retry-After``, or ``default`` when it gives none usable), up to
    ``maximum``. Answers to requests that had started before the last event
    belong to that event (they were in flight together) and change nothing.
    A success resets the level.
    """

    def __init__(
        self, default: float, maximum: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.default = default
        self.maximum = maximum
        self._clock = clock
        self._level: dict[str, int] = {}
        self._last_event: dict[str, float] = {}

    def rate_limited(self, key: str, started_at: float, retry_after: float | None) -> float | None:
        """Return the pause for a new event, or None if this answer is part of
        the last one."""
        if started_at <= self._last_event.get(key, float("-inf")):
            return None
        level = self._level.get(key, 0) + 1
        self._level[key] = level
        self._last_event[key] = self._clock()
        base = retry_after if retry_after is not None else self.default
        return min(self.maximum, base * 2 ** (level - 1))

    def succeeded(self, key: str) -> None:
        if self._level.pop(key, None) is not None:
            self._last_event.pop(key, None)


class Breaker:
    """Stops sending to a domain after ``threshold`` consecutive connection
    failures; after ``cooldown`` seconds lets one probe through, whose outcome
    closes or reopens it. ``threshold`` 0 disables it."""

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures: dict[str, int] = {}
        #: key -> when it may be probed; present while the breaker is open.
        self._open_until: dict[str, float] = {}
        self._probing: set[str] = set()

    def is_open(self, key: str) -> bool:
        """Is ``key`` refused now? (Unlike :meth:`allow`, grants no probe.)"""
        until = self._open_until.get(key)
        return until is not None and (key in self._probing or self._clock() < until)

    def allow(self, key: str) -> bool:
        """May a request to ``key`` go out now? Grants the one probe after a cooldown."""
        until = self._open_until.get(key)
        if until is None:
            return True
        if key in self._probing or self._clock() < until:
            return False
        self._probing.add(key)
        return True

    def failed(self, key: str) -> bool:
        """Count a connection failure; True when it (re)opens the breaker."""
        if not self.threshold:
            return False
        if key in self._probing:
            self._probing.discard(key)
            self._open_until[key] = self._clock() + self.cooldown
            return True
        if key in self._open_until:
            return False  # in flight before it opened: already counted
        failures = self._failures.get(key, 0) + 1
        if failures < self.threshold:
            self._failures[key] = failures
            return False
        self._failures.pop(key, None)
        self._open_until[key] = self._clock() + self.cooldown
        return True

    def succeeded(self, key: str) -> None:
        """The domain answered (whatever the status): close the breaker."""
        self._failures.pop(key, None)
        self._open_until.pop(key, None)
        self._probing.discard(key)

    def retry_in(self, key: str) -> float:
        """Seconds until ``key`` may be probed (0 when closed)."""
        until = self._open_until.get(key)
        return max(0.0, until - self._clock()) if until is not None else 0.0
