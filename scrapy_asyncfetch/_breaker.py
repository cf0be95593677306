"""A per-domain circuit breaker that always recovers.

Plain Python with an injected clock. After ``threshold`` consecutive failures to
reach a domain at all, its requests are refused until one probe may go out:
after 1 s (or ``cooldown`` if shorter), then after twice as long for each probe
that failed, up to ``cooldown``, so a host down for a few seconds is tried again
within seconds and a dead one costs a probe every ``cooldown``.

Every way a request can end is reported with :meth:`Breaker.record` as one of
three :class:`Reach` values, so a probe can never be left pending: an answer of
any kind (or a failure once connected) closes the breaker, a failure to connect
reopens it, and an ending that says nothing about the host (cancelled, crawl
closing) hands the probe to the next request at once.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

#: Seconds from opening to the first probe (or the cooldown, if shorter).
FIRST_PROBE_DELAY = 1.0


class Reach(enum.Enum):
    """What one request's ending says about its host."""

    #: It answered, whatever the status, or failed only after connecting
    #: (read timeout, reset, data loss, a stopped download).
    REACHED = enum.auto()
    #: It could not be reached: DNS, refused, connect timeout, TLS handshake.
    UNREACHABLE = enum.auto()
    #: Nothing learnt: cancelled, or the crawl is closing.
    UNKNOWN = enum.auto()


class Admission(enum.Enum):
    """The breaker's answer to "may a request go out now?"."""

    GO = enum.auto()
    #: Yes, as the one probe: its ending must be recorded with ``probe=True``.
    PROBE = enum.auto()
    REFUSED = enum.auto()


class Breaker:
    """``threshold`` 0 disables it."""

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures: dict[str, int] = {}
        #: key -> when it may be probed; present while the breaker is open.
        self._open_until: dict[str, float] = {}
        #: key -> failed probes since it opened.
        self._failed_probes: dict[str, int] = {}
        self._probing: set[str] = set()

    def is_open(self, key: str) -> bool:
        """Is ``key`` refused now? (Unlike :meth:`admit`, grants no probe.)"""
        until = self._open_until.get(key)
        return until is not None and (key in self._probing or self._clock() < until)

    def open_keys(self) -> set[str]:
        """The keys whose breaker is open (refused, or probing)."""
        return set(self._open_until)

    def admit(self, key: str) -> Admission:
        """May a request to ``key`` go out now? Grants the one probe after a cooldown."""
        until = self._open_until.get(key)
        if until is None:
            return Admission.GO
        if key in self._probing or self._clock() < until:
            return Admission.REFUSED
        self._probing.add(key)
        return Admission.PROBE

    def record(self, key: str, reach: Reach, *, probe: bool = False) -> bool:
        """Take the ending of a request to ``key``; True when it (re)opens the breaker."""
        if probe:
            self._probing.discard(key)
        if reach is Reach.REACHED:
            self._failures.pop(key, None)
            self._open_until.pop(key, None)
            self._failed_probes.pop(key, None)
            return False
        if reach is Reach.UNKNOWN or not self.threshold:
            return False  # an unfinished probe: the next request probes
        if probe:
            failed = self._failed_probes[key] = self._failed_probes.get(key, 0) + 1
            self._open_until[key] = self._clock() + self._cooldown(failed)
            return True
        if key in self._open_until:
            return False  # in flight before it opened: already counted
        failures = self._failures.get(key, 0) + 1
        if failures < self.threshold:
            self._failures[key] = failures
            return False
        self._failures.pop(key, None)
        self._open_until[key] = self._clock() + self._cooldown(0)
        return True

    def _cooldown(self, failed_probes: int) -> float:
        return min(self.cooldown, min(FIRST_PROBE_DELAY, self.cooldown) * 2**failed_probes)

    def export(self, key: str) -> dict[str, float] | None:
        """``key``'s state, for another process to :meth:`restore` (cluster mode hands
        a domain from worker to worker); None: nothing to remember."""
        until = self._open_until.get(key)
        failures = self._failures.get(key, 0)
        if until is None and not failures:
            return None
        state: dict[str, float] = {"failures": failures}
        if until is not None:
            state["open_for"] = max(0.0, until - self._clock())
            state["failed_probes"] = self._failed_probes.get(key, 0)
        return state

    def restore(self, key: str, state: dict[str, float] | None) -> None:
        """Take ``key``'s state from :meth:`export` (None: forget it)."""
        self._failures.pop(key, None)
        self._open_until.pop(key, None)
        self._failed_probes.pop(key, None)
        self._probing.discard(key)
        if state is None:
            return
        if state.get("failures"):
            self._failures[key] = int(state["failures"])
        if "open_for" in state:
            self._open_until[key] = self._clock() + float(state["open_for"])
            self._failed_probes[key] = int(state.get("failed_probes", 0))

    def retry_in(self, key: str) -> float:
        """Seconds until ``key`` may be probed (0 when closed, or while its probe is out)."""
        until = self._open_until.get(key)
        return max(0.0, until - self._clock()) if until is not None else 0.0
