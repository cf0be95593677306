"""The circuit breaker on its own, with a hand-driven clock."""

from __future__ import annotations

import pytest

from scrapy_asyncfetch._breaker import Admission, Breaker, Reach


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def opened(threshold: int = 3, cooldown: float = 30.0) -> tuple[Breaker, Clock]:
    clock = Clock()
    breaker = Breaker(threshold=threshold, cooldown=cooldown, clock=clock)
    assert [breaker.record("a", Reach.UNREACHABLE) for _ in range(threshold)][-1] is True
    return breaker, clock


def test_opens_probes_once_and_closes() -> None:
    breaker, clock = opened()
    assert breaker.is_open("a")
    assert breaker.admit("a") is Admission.REFUSED
    # The first probe after 1 s: a host down for a moment is back in seconds.
    assert breaker.retry_in("a") == 1.0
    # Failures of requests that were in flight when it opened do not extend it.
    assert breaker.record("a", Reach.UNREACHABLE) is False
    assert breaker.retry_in("a") == 1.0
    clock.now += 1
    assert not breaker.is_open("a")
    assert breaker.admit("a") is Admission.PROBE
    assert breaker.is_open("a")
    assert breaker.admit("a") is Admission.REFUSED  # only one probe
    assert breaker.record("a", Reach.UNREACHABLE, probe=True) is True  # open again
    assert breaker.retry_in("a") == 2.0
    clock.now += 2
    assert breaker.admit("a") is Admission.PROBE
    assert breaker.record("a", Reach.REACHED, probe=True) is False
    assert breaker.admit("a") is Admission.GO
    assert breaker.admit("a") is Admission.GO
    assert not breaker.is_open("a")


def test_probes_back_off_to_the_cooldown() -> None:
    breaker, clock = opened(cooldown=10.0)
    delays = []
    for _ in range(6):
        delays.append(breaker.retry_in("a"))
        clock.now += delays[-1]
        assert breaker.admit("a") is Admission.PROBE
        breaker.record("a", Reach.UNREACHABLE, probe=True)
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    # Closed, then opened again: from 1 s again.
    clock.now += 10
    breaker.admit("a")
    breaker.record("a", Reach.REACHED, probe=True)
    for _ in range(3):
        breaker.record("a", Reach.UNREACHABLE)
    assert breaker.retry_in("a") == 1.0


def test_a_short_cooldown_is_the_first_delay() -> None:
    breaker, _ = opened(cooldown=0.4)
    assert breaker.retry_in("a") == pytest.approx(0.4)


def test_a_probe_that_reached_the_host_closes_it_whatever_failed_next() -> None:
    # A read timeout, a reset once connected, data loss, a stopped download:
    # the host accepted the connection, so it is back.
    breaker, clock = opened()
    clock.now += 1
    assert breaker.admit("a") is Admission.PROBE
    breaker.record("a", Reach.REACHED, probe=True)
    assert breaker.admit("a") is Admission.GO


def test_a_probe_that_ends_saying_nothing_hands_the_probe_on_at_once() -> None:
    # Cancelled, or the crawl closing: no new cooldown, the next request probes.
    breaker, clock = opened()
    clock.now += 1
    assert breaker.admit("a") is Admission.PROBE
    assert breaker.record("a", Reach.UNKNOWN, probe=True) is False
    assert breaker.admit("a") is Admission.PROBE
    breaker.record("a", Reach.REACHED, probe=True)
    assert breaker.admit("a") is Admission.GO


@pytest.mark.parametrize("reach", list(Reach))
def test_every_ending_of_a_probe_settles_it(reach: Reach) -> None:
    breaker, clock = opened()
    clock.now += 1
    assert breaker.admit("a") is Admission.PROBE
    breaker.record("a", reach, probe=True)
    # Within one cooldown the host is used again (or probed again).
    clock.now += 30
    assert breaker.admit("a") in (Admission.GO, Admission.PROBE)


def test_an_answer_from_before_it_opened_closes_it() -> None:
    breaker, _ = opened()
    breaker.record("a", Reach.REACHED)
    assert breaker.admit("a") is Admission.GO


def test_counts_consecutive_failures_only() -> None:
    breaker = Breaker(threshold=2, cooldown=1.0, clock=Clock())
    assert breaker.record("a", Reach.UNREACHABLE) is False
    breaker.record("a", Reach.REACHED)
    assert breaker.record("a", Reach.UNREACHABLE) is False
    assert breaker.record("a", Reach.UNKNOWN) is False  # neither resets nor counts
    assert breaker.record("a", Reach.UNREACHABLE) is True
    assert breaker.admit("b") is Admission.GO  # other domains are unaffected


def test_threshold_zero_disables_it() -> None:
    breaker = Breaker(threshold=0, cooldown=1.0, clock=Clock())
    assert not any(breaker.record("a", Reach.UNREACHABLE) for _ in range(100))
    assert breaker.admit("a") is Admission.GO
