"""The politeness engine on its own: an injected clock, and simulated servers
(a token bucket, a capacity-limited host, per-URL faults) driven by a small
discrete-event client that obeys the engine's limits as the limiter does."""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from scrapy_asyncfetch._politeness import Cut, Politeness, parse_retry_after

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"7", 7.0),
        ("120", 120.0),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(seconds=30), usegmt=True), None),
        (b"0", None),
        (b"soon", None),
        (b"-5", None),
        (b"", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: bytes | str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def feed(
    politeness: Politeness,
    clock: Clock,
    pattern: list[bool],
    *,
    gap: float = 0.01,
    first_attempt: bool = True,
    concurrency: int = 8,
    latency: float | None = None,
) -> list[Cut]:
    """Answer one wave of requests, sent together, one per ``gap`` seconds,
    throttled where ``pattern`` says; or, with ``latency``, each sent that long
    before its answer."""
    cuts = []
    wave = clock.now  # all sent together, answered one by one
    for throttled in pattern:
        clock.now += gap
        cut = politeness.answered(
            "a",
            first_attempt=first_attempt,
            started=wave if latency is None else clock.now - latency,
            throttled=throttled,
            concurrency=concurrency,
            cap=16,
        )
        if cut is not None:
            cuts.append(cut)
    return cuts


def test_a_healthy_domain_keeps_no_state() -> None:
    clock = Clock()
    politeness = Politeness(clock=clock)
    assert feed(politeness, clock, [False] * 1000) == []
    assert "a" not in politeness
    assert politeness.limits("a") == (None, 0.0)


def test_a_few_broken_urls_among_many_pages_never_slow_their_domain() -> None:
    clock = Clock()
    politeness = Politeness(window=20, threshold=0.1, clock=clock)
    # One URL in 25 always answers 429: 4%, evenly spread.
    cuts = feed(politeness, clock, [n % 25 == 0 for n in range(2000)])
    assert cuts == []
    assert not politeness.is_slowed("a")


def test_retries_are_no_evidence() -> None:
    # At the end of a crawl only the retries of a few broken URLs are left:
    # however many there are, their domain keeps its pace.
    clock = Clock()
    politeness = Politeness(clock=clock)
    feed(politeness, clock, [False] * 50)
    assert feed(politeness, clock, [True] * 200, first_attempt=False) == []
    assert politeness.limits("a") == (None, 0.0)
    assert "a" not in politeness  # nor do they make it keep any state


def test_refused_retries_hold_a_slowed_domain_at_its_pace() -> None:
    clock = Clock()
    politeness = Politeness(clock=clock)
    assert feed(politeness, clock, [True] * 10)
    limit, interval = politeness.limits("a")
    # Served retries interleaved with refused ones: no speeding up; and
    # however long they go on, they at most halve the pace first attempts set.
    for _ in range(50):
        feed(politeness, clock, [True, False, False], first_attempt=False)
    assert politeness.limits("a") == (limit, pytest.approx(2 * interval))


def test_retries_that_are_never_served_never_slow_a_paced_domain() -> None:
    # A rate-limited domain with a few broken URLs: at the end of the crawl
    # only their retries are left, refused every time.
    clock = Clock()
    politeness = Politeness(clock=clock)
    assert feed(politeness, clock, [True] * 10)
    held = politeness.limits("a")
    assert feed(politeness, clock, [True] * 200, first_attempt=False) == []
    assert politeness.limits("a") == held


def test_retries_failing_with_server_errors_are_not_served() -> None:
    # Retries of URLs that answer 500 are their URLs' failures: they do not
    # show that the refused retries beside them were refused for the pace.
    clock = Clock()
    politeness = Politeness(clock=clock)
    assert feed(politeness, clock, [True] * 10)
    held = politeness.limits("a")
    for _ in range(50):
        clock.now += 0.01
        politeness.answered(
            "a",
            started=clock.now - 0.005,
            throttled=False,
            first_attempt=False,
            concurrency=1,
            cap=16,
            server_error=True,
        )
        assert feed(politeness, clock, [True], first_attempt=False) == []
    assert politeness.limits("a") == held


def test_a_refused_retry_ends_a_probe_above_the_pace() -> None:
    # A token bucket's stored burst lets the pace probe past its rate for
    # seconds; the retries left at the end then run into the empty bucket.
    clock = Clock()
    politeness = Politeness(window=20, threshold=0.1, clock=clock)
    assert len(feed(politeness, clock, [True] * 10, gap=0.1)) == 1
    paced = politeness.limits("a")
    feed(politeness, clock, [False] * 40, gap=0.1, latency=0.05)
    assert politeness.limits("a")[1] < paced[1]  # probing upwards
    # Two retries served, then one refused: back to the pace judged.
    assert feed(politeness, clock, [False, False, True], first_attempt=False, gap=0.1) == []
    assert politeness.limits("a")[1] == pytest.approx(paced[1])


def test_refused_retries_bring_down_a_pace_first_attempts_left_too_fast() -> None:
    # The first attempts ran out while the domain was still being slowed: at
    # the end of the crawl, retries, half of them refused, are all that is left.
    clock = Clock()
    politeness = Politeness(window=20, threshold=0.1, clock=clock)
    assert len(feed(politeness, clock, [True] * 10, gap=0.05)) == 1
    _, judged = politeness.limits("a")
    cuts = feed(politeness, clock, [False, True] * 10, first_attempt=False, gap=judged)
    assert cuts
    _, interval = politeness.limits("a")
    assert interval == pytest.approx(2 * judged)  # halved, and no further


def test_retries_among_first_attempts_leave_the_judging_to_them() -> None:
    # While first attempts still come, they are the evidence: refused retries
    # in between (a few broken URLs of a paced domain) hold the pace, no more.
    clock = Clock()
    politeness = Politeness(window=20, threshold=0.1, clock=clock)
    assert feed(politeness, clock, [True] * 10, gap=0.1)
    held = politeness.limits("a")
    for _ in range(20):
        assert feed(politeness, clock, [True, False], first_attempt=False, gap=0.1) == []
        feed(politeness, clock, [False], gap=0.1, latency=0.05)
    assert politeness.limits("a") == held


def test_a_burst_of_refusals_is_judged_at_once() -> None:
    # An overloaded host answers 503 to most of a first wave within
    # milliseconds; waiting for half a window would let immediate retries
    # hammer it before the first cut.
    clock = Clock()
    politeness = Politeness(window=20, clock=clock)
    cuts = feed(politeness, clock, [True] * 4, gap=0.001)
    assert len(cuts) == 1
    assert politeness.limits("a")[0] == 4


def test_a_rate_limited_domain_is_cut_to_what_it_accepted() -> None:
    clock = Clock()
    politeness = Politeness(window=20, threshold=0.1, clock=clock)
    # 100 answers a second, three in four of them 429: judged once half a
    # window of answers is in.
    cuts = feed(politeness, clock, [n % 4 != 0 for n in range(1, 11)], concurrency=8)
    assert len(cuts) == 1
    cut = cuts[0]
    # At most halved, from the observed 100/s.
    assert cut.rate == pytest.approx(50, rel=0.01)
    assert cut.concurrency == 4
    limit, interval = politeness.limits("a")
    assert limit == 4
    assert interval == pytest.approx(1 / 50, rel=0.01)


def test_a_cut_is_judged_by_answers_at_the_new_pace() -> None:
    clock = Clock()
    politeness = Politeness(window=20, threshold=0.1, clock=clock)
    assert len(feed(politeness, clock, [True] * 10)) == 1
    cut_at = clock.now
    cut = politeness.limits("a")
    # Answers to requests sent before the cut say nothing of the new pace.
    for _ in range(10):
        clock.now += 0.01
        late = politeness.answered(
            "a", started=cut_at - 0.5, throttled=True, first_attempt=True, concurrency=8, cap=16
        )
        assert late is None
    assert politeness.limits("a") == cut
    # Half a window at the new pace with fewer refusals: the cut helped and
    # stays; then a new burst of refusals is judged again.
    feed(politeness, clock, [False] * 10, latency=0.005)
    limit, interval = politeness.limits("a")
    assert limit == cut[0]
    assert interval <= cut[1]
    assert len(feed(politeness, clock, [True] * 10)) == 1


def test_a_cut_that_does_not_help_is_undone() -> None:
    # Half of this domain's URLs always answer 429, however slowly asked.
    clock = Clock()
    politeness = Politeness(window=20, clock=clock)
    half = [n % 2 == 0 for n in range(20)]
    # The first cut (at the start, too noisy to review) stays.
    assert len(feed(politeness, clock, half, gap=0.01)) == 1
    first = politeness.limits("a")
    # At the new pace: the same share refused: cut again...
    assert len(feed(politeness, clock, half[:7], gap=0.02, latency=0.001)) == 1
    assert politeness.limits("a") != first
    # ...and at that pace, the same share refused and fewer pages a second:
    # that cut did not help and is undone.
    feed(politeness, clock, half[:5], gap=0.04, latency=0.001)
    assert politeness.limits("a") == first
    # That share is now the domain's baseline: it is not cut for it again.
    assert feed(politeness, clock, half * 5, gap=0.02, latency=0.001) == []


def test_the_pace_never_drops_below_the_floor() -> None:
    clock = Clock()
    politeness = Politeness(window=4, threshold=0.5, min_rate=0.5, clock=clock)
    for _ in range(30):
        feed(politeness, clock, [True] * 4, gap=1.0)
    assert politeness.limits("a") == (1, pytest.approx(2.0))


def test_without_adaptive_concurrency_only_the_pace_changes() -> None:
    clock = Clock()
    politeness = Politeness(adaptive_concurrency=False, clock=clock)
    assert feed(politeness, clock, [True] * 20)
    limit, interval = politeness.limits("a")
    assert limit is None
    assert interval > 0


def test_a_recovered_domain_is_back_to_its_configured_caps() -> None:
    clock = Clock()
    politeness = Politeness(window=20, threshold=0.1, clock=clock)
    # Ten 429s, ten a second: one cut, to half the observed rate.
    assert len(feed(politeness, clock, [True] * 10, gap=0.1)) == 1
    assert politeness.limits("a") == (4, pytest.approx(1 / 5, rel=0.01))
    # Clean answers: once half a window of them came in a row, the pace probes
    # upwards by 1/rate per answer (about one request a second each second at
    # that pace): 11 of 20 answers, 5/s -> sqrt(25 + 2 * 11).
    feed(politeness, clock, [False] * 9, gap=0.1, latency=0.05)
    assert politeness.limits("a") == (4, pytest.approx(1 / 5, rel=0.01))
    feed(politeness, clock, [False] * 11, gap=0.1, latency=0.05)
    _, interval = politeness.limits("a")
    assert 1 / interval == pytest.approx(math.sqrt(25 + 2 * 11), rel=0.02)
    # Long clean and past the old ceiling, it speeds up geometrically until no
    # limit of its own is left.
    feed(politeness, clock, [False] * 1000, gap=0.1, latency=0.05)
    assert not politeness.is_slowed("a")
    assert politeness.limits("a") == (None, 0.0)


# --------------------------------------------------------------------------- simulation


@dataclass
class TokenBucket:
    """Allows ``rate`` requests a second (``burst`` at once); beyond: 429."""

    rate: float
    burst: float
    latency: float = 0.03
    tokens: float = field(init=False)
    at: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def answer(self, now: float, in_service: int) -> tuple[bool, float]:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return False, self.latency
        return True, self.latency


@dataclass
class Capacity:
    """Serves ``capacity`` at a time, slower as it fills; beyond: 503 at once."""

    capacity: int
    base: float = 0.05

    def answer(self, now: float, in_service: int) -> tuple[bool, float]:
        if in_service >= self.capacity:
            return True, 0.002
        return False, self.base * (1 + in_service / self.capacity)


@dataclass
class Faulty:
    """Healthy, except for the URLs ``broken`` picks, which always answer 429."""

    broken: Callable[[int], bool]
    latency: float = 0.03

    def answer(self, now: float, in_service: int, url: int = -1) -> tuple[bool, float]:
        return self.broken(url), self.latency


@dataclass
class Outcome:
    seconds: float
    pages: int
    lost: int
    throttled: int
    busiest: int
    cuts: int


def simulate(
    server: TokenBucket | Capacity | Faulty,
    politeness: Politeness | None,
    clock: Clock,
    *,
    urls: int,
    cap: int = 16,
    retries: int = 2,
    retry_after: float = 1.0,
    retries_first: bool = False,
) -> Outcome:
    """One domain crawled the way the middleware crawls it: at most ``cap``
    (or the engine's limit) in flight, starts spaced by the engine's pace,
    each 429/503 retried ``retries`` times after ``retry_after`` (ahead of the
    first attempts with ``retries_first``)."""
    clock.now = 0.0
    ready: deque[tuple[int, int]] = deque((url, 0) for url in range(urls))
    events: list[tuple[float, int, str, tuple[int, int, float, int]]] = []
    order = itertools.count()
    in_flight = busiest = throttled_count = pages = lost = cuts = 0
    last_start = -math.inf
    while ready or events:
        limit, interval = politeness.limits("a") if politeness else (None, 0.0)
        concurrency = cap if limit is None else min(cap, limit)
        next_start = last_start + interval
        if ready and in_flight < concurrency and clock.now >= next_start:
            url, attempt = ready.popleft()
            in_flight += 1
            busiest = max(busiest, in_flight)
            last_start = clock.now
            if isinstance(server, Faulty):
                throttled, latency = server.answer(clock.now, in_flight - 1, url)
            else:
                throttled, latency = server.answer(clock.now, in_flight - 1)
            done = (url, attempt, clock.now, in_flight)
            heapq.heappush(
                events, (clock.now + latency, next(order), "done" + "T" * throttled, done)
            )
            continue
        wake = [events[0][0]] if events else []
        if ready and in_flight < concurrency:
            wake.append(next_start)
        clock.now = max(clock.now, min(wake))
        while events and events[0][0] <= clock.now:
            _, _, kind, (url, attempt, started, at_start) = heapq.heappop(events)
            if kind == "retry":
                # Scrapy queues retries behind first attempts, except early on,
                # when start() has not filled the scheduler yet.
                (ready.appendleft if retries_first else ready.append)((url, attempt))
                continue
            in_flight -= 1
            throttled = kind.endswith("T")
            if politeness is not None:
                cut = politeness.answered(
                    "a",
                    started=started,
                    throttled=throttled,
                    first_attempt=attempt == 0,
                    concurrency=at_start,
                    cap=cap,
                )
                cuts += cut is not None
            if not throttled:
                pages += 1
            elif attempt < retries:
                throttled_count += 1
                retry = (url, attempt + 1, 0.0, 0)
                heapq.heappush(events, (clock.now + retry_after, next(order), "retry", retry))
            else:
                throttled_count += 1
                lost += 1
    return Outcome(clock.now, pages, lost, throttled_count, busiest, cuts)


def test_simulated_token_bucket_is_fetched_near_its_rate_with_few_429s() -> None:
    clock = Clock()
    stock = simulate(TokenBucket(rate=20, burst=20), None, clock, urls=400)
    clock = Clock()
    paced = simulate(TokenBucket(rate=20, burst=20), Politeness(clock=clock), clock, urls=400)
    # Unpaced, most requests are refused three times and lost.
    assert stock.lost > 100
    assert paced.lost == 0
    assert paced.pages == 400
    # The rate limit imposes ~19 s (400 - burst at 20/s); allow 1.2x + 5 s.
    assert paced.seconds <= 1.2 * 19 + 5, paced
    assert paced.throttled <= stock.throttled / 3, (paced, stock)


@pytest.mark.parametrize(("rate", "burst", "urls"), [(20, 10, 120), (20, 5, 200)])
def test_simulated_token_bucket_loses_no_page_at_the_end_of_the_crawl(
    rate: float, burst: float, urls: int
) -> None:
    # Retries queue behind first attempts: at the end of the crawl they are
    # all that is left, at whatever pace the first attempts left behind (here
    # one that probed past the bucket's rate while its stored burst lasted).
    # Each of them refused uses up one of its URL's three attempts.
    clock = Clock()
    paced = simulate(TokenBucket(rate, burst), Politeness(clock=clock), clock, urls=urls)
    assert paced.lost == 0, paced
    assert paced.seconds <= 1.2 * (urls - burst) / rate + 5, paced


@pytest.mark.parametrize("retries_first", [False, True])
def test_simulated_capacity_host_converges_on_its_capacity(retries_first: bool) -> None:
    # 503 at once beyond 6 in service, retried at once (as RetryMiddleware
    # does, with no Retry-After), behind the first attempts or, as early in a
    # crawl, ahead of them.
    def crawl(politeness: Politeness | None, clock: Clock) -> Outcome:
        return simulate(
            Capacity(capacity=6),
            politeness,
            clock,
            urls=400,
            retry_after=0.0,
            retries_first=retries_first,
        )

    stock = crawl(None, Clock())
    clock = Clock()
    adaptive = crawl(Politeness(clock=clock), clock)
    assert stock.lost > 300
    # Retries sent at once, ahead of everything, can still burn a URL's three
    # attempts in the first milliseconds, before any answer is judged.
    assert adaptive.lost <= (stock.lost // 100 if retries_first else 0), adaptive
    assert adaptive.throttled <= stock.throttled / 10, (adaptive, stock)
    # At 6 at a time and ~100 ms a request when full, 400 pages need ~6.7 s.
    assert adaptive.seconds < 10, adaptive


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(lambda url: url % 100 == 50, id="1%-spread"),
        pytest.param(lambda url: url >= 990, id="1%-clustered-at-the-end"),
        pytest.param(lambda url: url % 25 == 0, id="4%-spread"),
        pytest.param(lambda url: url % 20 in (0, 1), id="10%-in-pairs"),
        # Refusals that do not fall when the domain is slowed: the cuts are undone.
        pytest.param(lambda url: url % 10 in (0, 1, 2), id="30%-in-threes"),
        pytest.param(lambda url: url % 2 == 0, id="50%"),
    ],
)
def test_simulated_broken_urls_cost_no_time(broken: Callable[[int], bool]) -> None:
    clock = Clock()
    stock = simulate(Faulty(broken), None, clock, urls=1000)
    clock = Clock()
    politeness = Politeness(clock=clock)
    judged = simulate(Faulty(broken), politeness, clock, urls=1000)
    assert judged.pages == stock.pages
    # The retries' Retry-After (1 s, twice) is the wait, as without the engine.
    assert judged.seconds <= stock.seconds + 1.0, (judged, stock)


@dataclass
class LimitedWithBrokenUrls(Faulty):
    """A token bucket, and the URLs ``broken`` picks always answer 429."""

    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rate=20, burst=10))

    def answer(self, now: float, in_service: int, url: int = -1) -> tuple[bool, float]:
        if self.broken(url):
            return True, self.latency
        return self.bucket.answer(now, in_service)


def test_simulated_broken_urls_on_a_rate_limited_host_cost_at_most_half_the_pace() -> None:
    # One URL in ten always refused: at the end of the crawl their retries
    # mix with the bucket's, and retries can at most halve the pace.
    clock = Clock()
    server = LimitedWithBrokenUrls(lambda url: url % 10 == 3)
    judged = simulate(server, Politeness(clock=clock), clock, urls=400)
    assert judged.pages == 360
    assert judged.seconds <= 2 * (360 - 10) / 20, judged
