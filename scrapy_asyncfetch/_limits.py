"""Concurrency caps and politeness delays, in plain asyncio.

A request fetched from a downloader middleware never enters Scrapy's download
slots, so the caps Scrapy enforces there (per-domain concurrency, download delay)
have to be enforced here instead:

* a global cap on requests in flight;
* per key (domain or ``download_slot``): a concurrency cap and a minimum delay
  between request starts with Scrapy-style jitter, both re-read whenever they
  may have changed (AutoThrottle, the politeness engine), so a waiter never
  sleeps on a limit that no longer holds;
* waiting is FIFO per key, and a key waiting on its own cap or delay never
  holds a global place, so one slow domain cannot starve the others;
* the state of idle keys is swept away once their delay has passed, so memory
  follows the number of busy keys, not the number of keys ever seen;
* :meth:`Limiter.close` wakes every waiter with :class:`LimiterClosed`, so a
  closing crawl never waits out a long delay.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SlotPolicy:
    """The limits of one key, read at every acquire so they may change over time
    (AutoThrottle adjusts delays while the crawl runs)."""

    concurrency: int
    delay: float = 0.0
    jitter: float = 0.0

    def jitter_factor(self, draw: float) -> float:
        """The delay's multiplier for a uniform ``draw`` in [0, 1]: ``delay``
        varied by ±``jitter``, never negative."""
        return max(0.0, 1 + self.jitter * (2 * draw - 1)) if self.jitter else 1.0


class LimiterClosed(Exception):
    """Raised to requests waiting for a start when the limiter closes."""


class _Key:
    __slots__ = (
        "active",
        "gate",
        "last_start",
        "linger",
        "queued",
        "wakeup",
    )

    def __init__(self) -> None:
        self.active = 0
        # Callers inside acquire(): their state must not be dropped under them.
        self.queued = 0
        # FIFO: asyncio.Lock hands itself to waiters in arrival order. Only the
        # holder waits for capacity and delay, the others queue behind it.
        self.gate = asyncio.Lock()
        # Resolved when the holder should look again: a place freed, the limits
        # changed, or the limiter closed.
        self.wakeup: asyncio.Future[None] | None = None
        self.last_start = float("-inf")
        # How long after the last start this key's timing still matters.
        self.linger = 0.0

    def is_idle(self, now: float) -> bool:
        """Nothing holds or awaits this key and its delay has passed: it can be forgotten."""
        return not self.active and not self.queued and now >= self.last_start + self.linger

    def wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)


class Limiter:
    """Grant request starts under a global cap and per-key policies.

    ``total`` is the global cap on requests in flight (0: no global cap).
    Use as::

        waited = await limiter.acquire(key, policy)
        try:
            ...  # fetch
        finally:
            limiter.release(key)
    """

    _MIN_SWEEP = 256

    def __init__(
        self,
        total: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if total < 0:
            raise ValueError(f"the global cap must be >= 0, got {total}")
        self._global = asyncio.Semaphore(total) if total else None
        self._keys: dict[str, _Key] = {}
        self._clock = clock
        self._rand = rand
        self._sweep_at = self._MIN_SWEEP
        self._closed = False
        self.in_flight = 0
        self.peak_in_flight = 0

    def __len__(self) -> int:
        """How many keys currently have state (busy, waiting or within their delay)."""
        return len(self._keys)

    async def acquire(self, key: str, policy: SlotPolicy | Callable[[], SlotPolicy]) -> float:
        """Wait for a start for ``key``; return the seconds waited.

        ``policy`` may be a callable, read when this request reaches the head
        of its key's queue, so a limit changed meanwhile applies to it.
        """
        if self._closed:
            raise LimiterClosed
        started = self._clock()
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= self._sweep_at:
                self._sweep()
            state = self._keys[key] = _Key()
        if (
            not state.queued
            and (self._global is None or not self._global.locked())
            and state.active < (current := _current_policy(key, policy)).concurrency
            and not current.delay
        ):
            # Nobody waits, nothing to wait for: start now, without the queue.
            if self._global is not None:
                await self._global.acquire()  # free: returns at once
            state.active += 1
            state.last_start = now = self._clock()
            state.linger = 0.0
        else:
            now = await self._wait_for_turn(key, state, policy)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return now - started

    async def _wait_for_turn(
        self, key: str, state: _Key, policy: SlotPolicy | Callable[[], SlotPolicy]
    ) -> float:
        """Queue behind ``key``'s other waiters for its cap, its delay and a
        global place; return when this request started."""
        state.queued += 1
        try:
            async with state.gate:
                draw = self._rand()
                while True:
                    if self._closed:
                        raise LimiterClosed
                    current = _current_policy(key, policy)
                    wait: float | None = None  # None: until a place frees up
                    if state.active < current.concurrency:
                        delay = current.delay * current.jitter_factor(draw)
                        wait = state.last_start + delay - self._clock()
                        if wait <= 0:
                            break
                    await self._sleep(state, wait)
                if self._global is not None:
                    await self._global.acquire()
                state.active += 1
                state.last_start = now = self._clock()
                state.linger = current.delay * (1 + current.jitter)
        finally:
            state.queued -= 1
            # A key whose only wait was cancelled has no timing to remember.
            if state.last_start == float("-inf") and state.is_idle(self._clock()):
                del self._keys[key]
        return now

    @staticmethod
    async def _sleep(state: _Key, seconds: float | None) -> None:
        """Sleep ``seconds`` (None: indefinitely), or until ``state`` is woken."""
        loop = asyncio.get_running_loop()
        wakeup = state.wakeup = loop.create_future()
        timer = None if seconds is None else loop.call_later(seconds, state.wake)
        try:
            await wakeup
        finally:
            state.wakeup = None
            if timer is not None:
                timer.cancel()

    def release(self, key: str) -> None:
        """Give back the place taken by a successful :meth:`acquire` of ``key``."""
        state = self._keys[key]
        state.active -= 1
        self.in_flight -= 1
        if self._global is not None:
            self._global.release()
        state.wake()

    def changed(self, key: str) -> None:
        """``key``'s policy may have loosened: let its next waiter look again."""
        state = self._keys.get(key)
        if state is not None:
            state.wake()

    def active(self, key: str) -> int:
        """Requests of ``key`` in flight now."""
        state = self._keys.get(key)
        return state.active if state is not None else 0

    def remaining_delay(self, key: str) -> float:
        """Seconds until ``key``'s delay since its last start has passed, at its longest
        (full jitter): when another process may start the next request of it."""
        state = self._keys.get(key)
        if state is None:
            return 0.0
        return max(0.0, state.last_start + state.linger - self._clock())

    def close(self) -> None:
        """Refuse every start from now on: waiters raise :class:`LimiterClosed`."""
        self._closed = True
        for state in self._keys.values():
            state.wake()

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._keys.items() if s.is_idle(now)]:
            del self._keys[key]
        self._sweep_at = max(self._MIN_SWEEP, 2 * len(self._keys))


def _current_policy(key: str, policy: SlotPolicy | Callable[[], SlotPolicy]) -> SlotPolicy:
    """``key``'s limits now (``policy`` may be a function, called each time), checked."""
    current = policy() if callable(policy) else policy
    if current.concurrency < 1:
        raise ValueError(f"concurrency for {key!r} must be >= 1, got {current.concurrency}")
    return current
