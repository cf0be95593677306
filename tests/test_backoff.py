"""Backoff and circuit breaker on their own, with a hand-driven clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from scrapy_asyncfetch.backoff import Backoff, Breaker, parse_retry_after

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


def test_backoff_doubles_per_event_and_resets_on_success() -> None:
    clock = Clock()
    backoff = Backoff(default=2.0, maximum=10.0, clock=clock)
    assert backoff.rate_limited("a", started_at=99.0, retry_after=None) == 2.0
    clock.now = 110
    assert backoff.rate_limited("a", started_at=105.0, retry_after=None) == 4.0
    clock.now = 120
    assert backoff.rate_limited("a", started_at=115.0, retry_after=3.0) == 10.0  # 3 * 4, capped
    backoff.succeeded("a")
    clock.now = 130
    assert backoff.rate_limited("a", started_at=125.0, retry_after=3.0) == 3.0


def test_answers_in_flight_with_the_event_are_one_event() -> None:
    clock = Clock()
    backoff = Backoff(default=1.0, maximum=60.0, clock=clock)
    assert backoff.rate_limited("a", started_at=99.0, retry_after=None) == 1.0
    clock.now = 105
    # Started before the event (at 100): the same burst, whenever it arrives.
    for _ in range(20):
        assert backoff.rate_limited("a", started_at=99.5, retry_after=None) is None
    # Other domains are independent.
    assert backoff.rate_limited("b", started_at=99.5, retry_after=None) == 1.0


def test_breaker_opens_probes_once_and_closes() -> None:
    clock = Clock()
    breaker = Breaker(threshold=3, cooldown=30.0, clock=clock)
    assert [breaker.failed("a") for _ in range(3)] == [False, False, True]
    assert breaker.is_open("a")
    assert not breaker.allow("a")
    assert breaker.retry_in("a") == 30.0
    # Failures of requests that were in flight when it opened do not extend it.
    assert breaker.failed("a") is False
    clock.now += 30
    assert not breaker.is_open("a")
    assert breaker.allow("a")  # the probe
    assert breaker.is_open("a")
    assert not breaker.allow("a")  # only one
    assert breaker.failed("a") is True  # probe failed: open again
    assert breaker.retry_in("a") == 30.0
    clock.now += 30
    assert breaker.allow("a")
    breaker.succeeded("a")
    assert breaker.allow("a")
    assert breaker.allow("a")
    assert not breaker.is_open("a")


def test_breaker_counts_consecutive_failures_only() -> None:
    breaker = Breaker(threshold=2, cooldown=1.0, clock=Clock())
    assert breaker.failed("a") is False
    breaker.succeeded("a")
    assert breaker.failed("a") is False
    assert breaker.failed("a") is True


def test_breaker_threshold_zero_disables_it() -> None:
    breaker = Breaker(threshold=0, cooldown=1.0, clock=Clock())
    assert not any(breaker.failed("a") for _ in range(100))
    assert breaker.allow("a")
