"""Concurrency caps and politeness delays, in plain asyncio.

A request fetched from a downloader middleware never enters Scrapy's download
slots, so the caps Scrapy enforces there (per-domain concurrency, download delay)
have to be enforced here instead:

* a global cap on requests in flight;
* per key (domain or ``download_slot``): a concurrency cap, a minimum delay
  between request starts with Scrapy-style jitter, and an optional pause
  (for ``Retry-After`` style backoff);
* waiting is FIFO per key, and a key waiting on its own cap or delay never
  holds a global place, so one slow domain cannot starve the others;
* the state of idle keys is swept away once their delay has passed, so memory
  follows the number of busy keys, not the number of keys ever seen.
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

    def sample_delay(self, rand: Callable[[], float] = random.random) -> float:
        """The delay before the next start: ``delay`` varied by ±``jitter``, never negative."""
        if not self.jitter or not self.delay:
            return self.delay
        return max(0.0, self.delay * (1 + self.jitter * (2 * rand() - 1)))


class _Key:
    __slots__ = (
        "active",
        "capacity_freed",
        "gate",
        "last_start",
        "linger",
        "paused_until",
        "queued",
    )

    def __init__(self) -> None:
        self.active = 0
        # Callers inside acquire(): their state must not be dropped under them.
        self.queued = 0
        # FIFO: asyncio.Lock hands itself to waiters in arrival order. Only the
        # holder waits for capacity and delay, the others queue behind it.
        self.gate = asyncio.Lock()
        self.capacity_freed: asyncio.Future[None] | None = None
        self.last_start = float("-inf")
        self.paused_until = float("-inf")
        # How long after the last start this key's timing still matters.
        self.linger = 0.0

    def idle_since(self, now: float) -> bool:
        return (
            not self.active
            and not self.queued
            and now >= self.last_start + self.linger
            and now >= self.paused_until
        )


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
        started = self._clock()
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= self._sweep_at:
                self._sweep()
            state = self._keys[key] = _Key()
        if (
            not state.queued
            and (self._global is None or not self._global.locked())
            and (now := self._clock()) >= state.paused_until
            and state.active < (current := _read(key, policy)).concurrency
            and not current.delay
        ):
            # Nobody waits, nothing to wait for: start now, without the queue.
            if self._global is not None:
                await self._global.acquire()  # free: returns at once
            state.active += 1
            state.last_start = now
            state.linger = 0.0
        else:
            now = await self._wait_for_turn(key, state, policy)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return now - started

    async def _wait_for_turn(
        self, key: str, state: _Key, policy: SlotPolicy | Callable[[], SlotPolicy]
    ) -> float:
        """Queue behind ``key``'s other waiters for its cap, delay, pause and a
        global place; return when this request started."""
        state.queued += 1
        try:
            async with state.gate:
                while state.active >= (current := _read(key, policy)).concurrency:
                    state.capacity_freed = asyncio.get_running_loop().create_future()
                    await state.capacity_freed
                delay = current.sample_delay(self._rand)
                # A loop, not one sleep: a pause may be extended meanwhile.
                while (wait := self._wait_needed(state, delay)) > 0:  # noqa: ASYNC110
                    await asyncio.sleep(wait)
                if self._global is not None:
                    await self._global.acquire()
                state.active += 1
                state.last_start = now = self._clock()
                state.linger = current.delay * (1 + current.jitter)
        finally:
            state.queued -= 1
            # A key whose only wait was cancelled has no timing to remember.
            if state.last_start == float("-inf") and state.idle_since(self._clock()):
                del self._keys[key]
        return now

    def _wait_needed(self, state: _Key, delay: float) -> float:
        now = self._clock()
        return max(state.last_start + delay - now, state.paused_until - now)

    def release(self, key: str) -> None:
        """Give back the place taken by a successful :meth:`acquire` of ``key``."""
        state = self._keys[key]
        state.active -= 1
        self.in_flight -= 1
        if self._global is not None:
            self._global.release()
        freed = state.capacity_freed
        if freed is not None and not freed.done():
            freed.set_result(None)

    def pause(self, key: str, seconds: float) -> None:
        """Hold new starts for ``key`` for ``seconds`` from now (a longer pause
        already in force stays)."""
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _Key()
        state.paused_until = max(state.paused_until, self._clock() + seconds)

    def _sweep(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._keys.items() if s.idle_since(now)]:
            del self._keys[key]
        self._sweep_at = max(self._MIN_SWEEP, 2 * len(self._keys))


def _read(key: str, policy: SlotPolicy | Callable[[], SlotPolicy]) -> SlotPolicy:
    current = policy() if callable(policy) else policy
    if current.concurrency < 1:
        raise ValueError(f"concurrency for {key!r} must be >= 1, got {current.concurrency}")
    return current
