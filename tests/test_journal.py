"""The in-flight journal on its own: what a killed run leaves is handed back once."""

from __future__ import annotations

import os
from pathlib import Path

from scrapy_asyncfetch.journal import JOURNAL_NAME, InFlightJournal


def test_unfinished_requests_come_back_once(tmp_path: Path) -> None:
    journal = InFlightJournal(str(tmp_path))
    assert journal.open() == []
    journal.started("a", {"url": "http://h1.test/a", "body": b"\x00"})
    journal.started("b", {"url": "http://h1.test/b"})
    journal.started("c", {"url": "http://h1.test/c"})
    journal.done("b")
    # A retry of "c" dispatched again: the latest copy wins.
    journal.started("c", {"url": "http://h1.test/c", "meta": {"retry_times": 1}})
    # SIGKILL: no close, and a line torn in the middle.
    with open(journal.path, "ab") as file:
        file.write(b'{"started": "d", "requ')

    again = InFlightJournal(str(tmp_path))
    unfinished = sorted(again.open(), key=lambda d: d["url"])
    assert unfinished == [
        {"url": "http://h1.test/a", "body": b"\x00"},
        {"url": "http://h1.test/c", "meta": {"retry_times": 1}},
    ]
    # Handed back once: the new run starts an empty journal.
    again.close()
    assert os.path.getsize(tmp_path / JOURNAL_NAME) == 0
    assert InFlightJournal(str(tmp_path)).open() == []
