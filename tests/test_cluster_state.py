"""What a domain's state is when it moves from worker to worker, and what a worker holds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from scrapy import Request

from scrapy_asyncfetch import AsyncFetchMiddleware
from scrapy_asyncfetch._breaker import Breaker, Reach
from scrapy_asyncfetch._cluster.local import LocalFrontier, Want
from scrapy_asyncfetch._limits import Limiter, SlotPolicy
from scrapy_asyncfetch._politeness import Politeness
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer
from tests.spiders import Collector
from tests.test_caps import CONNECT_SLACK, gaps


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_open_breaker_stays_open_in_the_next_worker() -> None:
    clock = Clock()
    one = Breaker(threshold=2, cooldown=30, clock=clock)
    one.record("a", Reach.UNREACHABLE)
    one.record("a", Reach.UNREACHABLE)
    assert one.is_open("a")
    clock.now += 0.25
    state = one.export("a")
    assert state is not None
    # Through JSON, as it travels in Redis; the next worker's clock is its own.
    other_clock = Clock()
    other_clock.now = 5000.0
    two = Breaker(threshold=2, cooldown=30, clock=other_clock)
    two.restore("a", json.loads(json.dumps(state)))
    assert two.is_open("a")
    assert abs(two.retry_in("a") - 0.75) < 1e-9
    other_clock.now += 0.75
    two.admit("a")  # the probe
    assert two.record("a", Reach.UNREACHABLE, probe=True)  # reopens, for twice as long
    assert two.retry_in("a") == 2.0


def test_a_breaker_counts_failures_across_workers_and_forgets() -> None:
    one = Breaker(threshold=3, cooldown=30)
    one.record("a", Reach.UNREACHABLE)
    assert one.export("a") == {"failures": 1}
    assert one.export("b") is None
    two = Breaker(threshold=3, cooldown=30)
    two.restore("a", one.export("a"))
    two.record("a", Reach.UNREACHABLE)
    assert two.record("a", Reach.UNREACHABLE)  # the third in a row, across two workers
    two.restore("a", None)
    assert not two.is_open("a")


def slow_down(politeness: Politeness, clock: Clock) -> None:
    """Answers of which half are 429: the domain gets paced and capped."""
    for n in range(20):
        clock.now += 0.1
        politeness.answered(
            "a",
            started=clock.now - 0.05,
            throttled=n % 2 == 0,
            first_attempt=True,
            concurrency=4,
            cap=8,
        )


def test_a_slowed_domain_stays_slowed_in_the_next_worker() -> None:
    clock = Clock()
    one = Politeness(window=10, clock=clock)
    slow_down(one, clock)
    assert one.is_slowed("a")
    state = one.export("a")
    two = Politeness(window=10, clock=Clock())
    two.restore("a", json.loads(json.dumps(state)))
    assert two.limits("a") == one.limits("a")
    assert two.is_slowed("a")
    two.restore("a", None)
    assert not two.is_slowed("a")
    assert one.export("healthy") is None


@asyncio_test
async def test_the_delay_left_is_the_longest_the_jitter_allows() -> None:
    clock = Clock()
    limiter = Limiter(0, clock=clock, rand=lambda: 0.0)
    await limiter.acquire("a", SlotPolicy(1, delay=2.0, jitter=0.5))
    limiter.release("a")
    assert limiter.remaining_delay("a") == 3.0  # 2 s x (1 + 0.5)
    clock.now += 1.0
    assert limiter.remaining_delay("a") == 2.0
    clock.now += 5.0
    assert limiter.remaining_delay("a") == 0.0
    assert limiter.remaining_delay("never") == 0.0


def test_local_frontier_takes_domains_in_turn_and_releases_idle_ones() -> None:
    local: LocalFrontier[str] = LocalFrontier(batch=4)
    local.add("a", [("1", "a1"), ("2", "a2")])
    local.add("b", [("3", "b1")])
    assert [local.pop(), local.pop(), local.pop(), local.pop()] == [
        ("1", "a1"),
        ("3", "b1"),
        ("2", "a2"),
        None,
    ]
    # Taken, no outcome yet: low, so asked for more, but not idle.
    assert sorted(local.wants(), key=lambda w: w.domain) == [
        Want("a", 4, idle=False),
        Want("b", 4, idle=False),
    ]
    local.drained("a")
    assert local.done("1") == "a"
    assert local.done("2") == "a"
    assert [w for w in local.wants() if w.domain == "a"] == [Want("a", 4, idle=True)]
    # A retry kept here, under the same id, on a domain still leased.
    local.put_back("b", "3", "b1-retry")
    assert local.waiting == 1
    assert local.release("b") == ["3"]
    assert "3" not in local
    assert local.waiting == 0
    assert local.pop() is None


def test_local_frontier_lets_the_domains_beyond_its_share_go() -> None:
    local: LocalFrontier[str] = LocalFrontier(batch=2)
    local.add("a", [("a1", "a1"), ("a2", "a2"), ("a3", "a3")])
    local.add("b", [("b1", "b1")])
    local.add("c", [("c1", "c1"), ("c2", "c2")])
    local.keep_at_most(2)
    assert local.yielding == {"b"}  # the least left here: drains first
    while local.pop() is not None:
        pass
    for request_id in ("a1", "b1", "c1"):
        local.done(request_id)
    wants = {want.domain: want for want in local.wants()}
    # b is idle: released, not refilled; a and c run low: refilled.
    assert (wants["b"].want, wants["b"].idle) == (0, True)
    assert not wants["a"].idle
    assert not wants["c"].idle
    local.keep_at_most(3)  # the share grew back
    assert local.yielding == set()


class HandedOver(Collector):
    """Takes host 1 with an AutoThrottle delay of 1 s handed over, as from the worker
    that leased it before; keeps what it would hand over itself at the end."""

    exported: tuple[str, float] = ("", 0.0)

    async def start(self) -> AsyncIterator[Request]:
        middleware = AsyncFetchMiddleware.of(self.crawler)
        assert middleware is not None
        middleware.restore_domain("127.0.0.1", json.dumps({"autothrottle_delay": 1.0}))
        async for request in super().start():
            yield request

    def closed(self, reason: str) -> None:
        middleware = AsyncFetchMiddleware.of(self.crawler)
        assert middleware is not None
        self.exported = middleware.export_domain("127.0.0.1")


@asyncio_test
async def test_an_autothrottle_delay_goes_on_in_the_next_worker(mockserver: MockServer) -> None:
    # AutoThrottle would start at 0.1 s and stay near 0.1 (the server answers in 0.05 s).
    # Handed 1 s, it goes on from there: (delay + latency) / 2 at each answer, so the
    # gaps are about 0.53 s and 0.29 s (each waiting request re-reads the delay).
    settings = {
        "AUTOTHROTTLE_ENABLED": True,
        "AUTOTHROTTLE_START_DELAY": 0.1,
        "AUTOTHROTTLE_TARGET_CONCURRENCY": 1.0,
        "DOWNLOAD_DELAY_JITTER": 0,
    }
    urls = [mockserver.url("/delay/0.05") for _ in range(3)]
    crawler = await crawl(HandedOver, settings, requests=urls)
    spider = crawler.spider
    assert isinstance(spider, HandedOver)
    assert len(spider.responses) == 3, spider.failures
    first_gap, second_gap = gaps(mockserver.host_stats(1)["starts"])
    assert first_gap >= 0.52 - CONNECT_SLACK
    assert second_gap >= 0.28 - CONNECT_SLACK
    state, _ = spider.exported
    delay = json.loads(state)["autothrottle_delay"]
    assert 0.05 <= delay < 0.5
