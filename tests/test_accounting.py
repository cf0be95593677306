"""The ledger's parts on their own: each id that enters ends exactly once, and
the failures file."""

from __future__ import annotations

import logging
import os

import pytest

from scrapy_asyncfetch._accounting import Accounts
from scrapy_asyncfetch._failures import FailuresFile, failure_record


def test_settling_a_request_ends_it_once() -> None:
    accounts = Accounts()
    ledger_id = accounts.enter("http://a.test/")
    accounts.dispatched.add(ledger_id)
    accounts.responded[ledger_id] = (200, 1)
    assert accounts.pending == {ledger_id: "http://a.test/"}
    assert accounts.settle(ledger_id)
    accounts.pages += 1
    assert not accounts.pending
    assert not accounts.dispatched
    assert not accounts.responded
    assert not accounts.settle(ledger_id)  # a repeated outcome is not counted
    assert accounts.unaccounted(left_for_resume=0) == 0


def test_ids_are_unique_across_runs() -> None:
    first, second = Accounts(), Accounts()
    ids = {first.enter("http://a.test/"), first.enter("http://a.test/"), second.enter("x")}
    assert len(ids) == 3


def test_unaccounted_counts_requests_without_an_outcome() -> None:
    accounts = Accounts()
    for i in range(4):
        accounts.enter(f"http://a.test/{i}")
    ended, failed = list(accounts.pending)[:2]
    accounts.settle(ended)
    accounts.no_page += 1
    accounts.settle(failed)
    accounts.failures["HttpError"] += 1
    assert accounts.unaccounted(left_for_resume=0) == 2
    # What JOBDIR keeps for the next run is accounted for.
    assert accounts.unaccounted(left_for_resume=2) == 0
    # A rejected input counts as entered, and its failure as its outcome.
    accounts.rejected += 1
    assert accounts.unaccounted(left_for_resume=2) == 1
    accounts.failures["InvalidURL"] += 1
    assert accounts.unaccounted(left_for_resume=2) == 0


def test_a_request_of_an_earlier_run_counts_as_resumed_once() -> None:
    earlier = Accounts().enter("http://a.test/")
    accounts = Accounts()
    assert accounts.settle(earlier)
    accounts.pages += 1
    assert not accounts.settle(earlier)
    assert accounts.resumed == 1
    assert accounts.unaccounted(left_for_resume=0) == 0


def test_a_duplicate_never_entered() -> None:
    accounts = Accounts()
    ledger_id = accounts.enter("http://a.test/")
    assert accounts.unenter_duplicate(ledger_id)
    assert not accounts.unenter_duplicate(ledger_id)
    assert (accounts.entered, accounts.duplicates) == (0, 1)
    assert accounts.unaccounted(left_for_resume=0) == 0


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_failures_file_stops_once_the_disk_is_full(caplog: pytest.LogCaptureFixture) -> None:
    broken: list[None] = []
    file = FailuresFile(
        "/dev/full",
        beside_pages=False,
        close_reason="closed",
        on_broken=lambda: broken.append(None),
    )
    assert file.open()
    for _ in range(3):
        file.append(failure_record("http://a.test/", "HttpError", "404", attempts=1, status=404))
    assert len(broken) == 1
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "ASYNCFETCH_FAILURES_FILE" in error.getMessage()


def test_failures_file_path() -> None:
    assert FailuresFile.choose_path("f.jsonl", "pages") == "f.jsonl"
    assert FailuresFile.choose_path(None, "pages") == os.path.join("pages", "failures.jsonl")
    assert FailuresFile.choose_path("", None) is None
