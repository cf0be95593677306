"""The limiter on its own: plain asyncio, no crawler."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from scrapy_asyncfetch._limits import Limiter, LimiterClosed, SlotPolicy
from tests.conftest import asyncio_test


class Probe:
    """Runs jobs through a limiter and records what was concurrent, and when."""

    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.global_peak = 0
        self.starts: dict[str, list[float]] = {}
        self.order: list[tuple[str, int]] = []

    async def job(self, key: str, policy: SlotPolicy, hold: float, n: int = 0) -> None:
        await self.limiter.acquire(key, policy)
        loop = asyncio.get_running_loop()
        self.order.append((key, n))
        self.starts.setdefault(key, []).append(loop.time())
        self.active[key] = self.active.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.active[key])
        self.global_peak = max(self.global_peak, sum(self.active.values()))
        try:
            await asyncio.sleep(hold)
        finally:
            self.active[key] -= 1
            self.limiter.release(key)


@asyncio_test
async def test_per_key_cap_is_reached_and_never_exceeded() -> None:
    probe = Probe(Limiter(0))
    policy = SlotPolicy(concurrency=3)
    await asyncio.gather(*(probe.job(k, policy, 0.02) for k in "ab" for _ in range(10)))
    assert probe.peak == {"a": 3, "b": 3}
    assert probe.global_peak == 6


@asyncio_test
async def test_global_cap_is_reached_and_never_exceeded() -> None:
    limiter = Limiter(4)
    probe = Probe(limiter)
    policy = SlotPolicy(concurrency=3)
    await asyncio.gather(*(probe.job(k, policy, 0.02) for k in "abc" for _ in range(6)))
    assert probe.global_peak == 4
    assert limiter.peak_in_flight == 4
    assert limiter.in_flight == 0


@asyncio_test
async def test_delay_spaces_starts_of_one_key_only() -> None:
    probe = Probe(Limiter(0))
    slow = SlotPolicy(concurrency=10, delay=0.1)
    fast = SlotPolicy(concurrency=10)
    await asyncio.gather(
        *(probe.job("slow", slow, 0) for _ in range(4)),
        *(probe.job("fast", fast, 0) for _ in range(4)),
    )
    gaps = [b - a for a, b in zip(probe.starts["slow"], probe.starts["slow"][1:], strict=False)]
    assert len(gaps) == 3
    assert min(gaps) >= 0.095
    # The other key never waited on that delay: all of it started before the
    # delayed key's second start (an order, which no load can change).
    assert max(probe.starts["fast"]) < probe.starts["slow"][1]


def test_jitter_stays_within_its_bounds() -> None:
    policy = SlotPolicy(concurrency=1, delay=1.0, jitter=0.5)
    assert policy.delay * policy.jitter_factor(0.0) == pytest.approx(0.5)
    assert policy.delay * policy.jitter_factor(1.0) == pytest.approx(1.5)
    assert SlotPolicy(concurrency=1, delay=1.0, jitter=3).jitter_factor(0.0) == 0.0
    assert SlotPolicy(concurrency=1, delay=1.0).jitter_factor(0.0) == 1.0


@asyncio_test
async def test_waiting_is_fifo_per_key() -> None:
    probe = Probe(Limiter(0))
    policy = SlotPolicy(concurrency=1)
    await asyncio.gather(*(probe.job("a", policy, 0.001, n) for n in range(20)))
    assert [n for _, n in probe.order] == list(range(20))


@asyncio_test
async def test_a_key_waiting_on_its_cap_does_not_starve_others() -> None:
    limiter = Limiter(4)
    probe = Probe(limiter)
    one = SlotPolicy(concurrency=1)
    # 10 requests for a slow single-slot key, queued first, then fast keys.
    slow = [asyncio.ensure_future(probe.job("slow", one, 60)) for _ in range(10)]
    await asyncio.sleep(0)
    fast = asyncio.gather(*(probe.job(f"fast{i}", one, 0.01) for i in range(12)))
    # Only one global place is held by the slow key: the 12 fast jobs all run
    # on the other 3 (they would wait a minute behind the slow key otherwise).
    await asyncio.wait_for(fast, 30)
    assert len(probe.starts["slow"]) == 1
    assert probe.global_peak == 4
    for task in slow:
        task.cancel()
    await asyncio.gather(*slow, return_exceptions=True)


@asyncio_test
async def test_cancelled_waiters_leave_no_trace() -> None:
    limiter = Limiter(1)
    policy = SlotPolicy(concurrency=1)
    await limiter.acquire("a", policy)
    waiters = [asyncio.ensure_future(limiter.acquire(k, policy)) for k in ("a", "b", "a")]
    await asyncio.sleep(0.01)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    limiter.release("a")
    assert limiter.in_flight == 0
    # "b" never started: nothing kept. "a" is idle: gone at the next sweep.
    assert len(limiter) == 1
    limiter._sweep()
    assert len(limiter) == 0
    # Still fully usable afterwards.
    await asyncio.wait_for(limiter.acquire("a", policy), 1)
    limiter.release("a")


@asyncio_test
async def test_idle_keys_are_forgotten() -> None:
    limiter = Limiter(0)
    policy = SlotPolicy(concurrency=2)
    for i in range(5000):
        await limiter.acquire(f"host{i}", policy)
        limiter.release(f"host{i}")
    # Swept as new keys arrive: bounded by the sweep threshold, not by 5000.
    assert len(limiter) <= 2 * Limiter._MIN_SWEEP
    delayed = SlotPolicy(concurrency=2, delay=0.05)
    for i in range(1000):
        await limiter.acquire(f"d{i}", delayed)
        limiter.release(f"d{i}")
    # Keys still within their delay are kept, so the delay holds...
    assert len(limiter) >= 1000
    await asyncio.sleep(0.06)
    # ...and swept once it has passed.
    limiter._sweep()
    assert len(limiter) == 0


@asyncio_test
async def test_a_loosened_policy_wakes_the_waiter_at_once() -> None:
    # The politeness engine speeds a domain up while its next request sleeps
    # out the old, longer delay: it must not oversleep.
    limiter = Limiter(0)
    policy = {"now": SlotPolicy(concurrency=1, delay=60.0)}
    await limiter.acquire("a", SlotPolicy(concurrency=1))
    limiter.release("a")
    waiter = asyncio.ensure_future(limiter.acquire("a", lambda: policy["now"]))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    limiter.changed("a")  # nothing changed yet: it sleeps on
    await asyncio.sleep(0.05)
    assert not waiter.done()
    policy["now"] = SlotPolicy(concurrency=1, delay=0.0)
    limiter.changed("a")
    # Woken, not at the end of the old delay (a minute): a bound no load reaches.
    await asyncio.wait_for(waiter, 30)
    limiter.release("a")


@asyncio_test
async def test_a_raised_cap_wakes_the_waiter_at_once() -> None:
    limiter = Limiter(0)
    policy = {"now": SlotPolicy(concurrency=1)}
    await limiter.acquire("a", lambda: policy["now"])
    waiter = asyncio.ensure_future(limiter.acquire("a", lambda: policy["now"]))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    policy["now"] = SlotPolicy(concurrency=2)
    limiter.changed("a")
    await asyncio.wait_for(waiter, 1)
    assert limiter.active("a") == 2


@asyncio_test
async def test_close_ends_every_wait_at_once() -> None:
    limiter = Limiter(0)
    slow = SlotPolicy(concurrency=1, delay=60.0)
    await limiter.acquire("a", slow)
    waiters = [asyncio.ensure_future(limiter.acquire("a", slow)) for _ in range(3)]
    await asyncio.sleep(0.02)
    limiter.close()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 1)
    assert all(isinstance(r, LimiterClosed) for r in results), results
    with pytest.raises(LimiterClosed):
        await limiter.acquire("b", SlotPolicy(concurrency=1))


@asyncio_test
async def test_policy_changes_apply_to_the_next_start() -> None:
    # AutoThrottle raises a slot's delay while the crawl runs.
    probe = Probe(Limiter(0))
    await probe.job("a", SlotPolicy(concurrency=1, delay=0.0), 0)
    await probe.job("a", SlotPolicy(concurrency=1, delay=0.15), 0)
    first, second = probe.starts["a"]
    assert second - first >= 0.145


@asyncio_test
async def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="global cap"):
        Limiter(-1)
    with pytest.raises(ValueError, match="concurrency"):
        await Limiter(0).acquire("a", SlotPolicy(concurrency=0))


@asyncio_test
async def test_uncontended_starts_take_no_queue_but_keep_every_limit() -> None:
    # The fast path (nobody waiting, no delay) must still count toward the caps
    # it skips the queue for.
    # A clock that ticks once a reading: the fast path reads it twice (one
    # tick waited), the queue at least three times.
    ticks = itertools.count()
    limiter = Limiter(2, clock=lambda: float(next(ticks)))
    policy = SlotPolicy(concurrency=1)
    assert await limiter.acquire("a", policy) == 1
    second = asyncio.ensure_future(limiter.acquire("a", policy))
    await asyncio.sleep(0.01)
    assert not second.done()  # per-key cap
    assert await limiter.acquire("b", policy) == 1
    third = asyncio.ensure_future(limiter.acquire("c", policy))
    await asyncio.sleep(0.01)
    assert not third.done()  # global cap
    # "c" has waited longest for a global place: it gets the one "a" frees.
    limiter.release("a")
    await asyncio.wait_for(third, 1)
    assert not second.done()
    limiter.release("b")
    await asyncio.wait_for(second, 1)
    assert limiter.in_flight == limiter.peak_in_flight == 2
