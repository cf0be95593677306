"""The ledger's accounts: which requests entered, and how each one ended.

Plain Python (no Scrapy), so the invariant can be unit-tested on its own: every
id that enters ends exactly once, as a page, a response without a page or a
failure, or is left for the next run of a JOBDIR.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter


class Accounts:
    def __init__(self) -> None:
        # Ids are unique across runs: a resumed crawl (JOBDIR) brings back
        # requests whose ids were given by an earlier process.
        self._run = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        #: id -> URL of requests that entered the scheduler and have no outcome yet.
        self.pending: dict[str, str] = {}
        #: ids that left the scheduler and have no outcome yet.
        self.dispatched: set[str] = set()
        #: id -> (status, attempts) of final responses still awaiting a Page.
        self.responded: dict[str, tuple[int, int]] = {}
        # Ids of an earlier run that ended in this one: a second outcome is a repeat.
        self._resumed_settled: set[str] = set()
        self.entered = 0
        self.duplicates = 0
        self.pages = 0
        #: Responses processed without error that yielded no Page: the outcome
        #: of a spider that does not write pages.
        self.no_page = 0
        self.resumed = 0
        #: Inputs refused before they could become requests (e.g. invalid URLs).
        self.rejected = 0
        #: Cluster mode: requests passed to the shared frontier (their outcome is
        #: whichever worker's fetches them), and requests taken from it.
        self.handed_off = 0
        self.taken = 0
        self.failures: Counter[str] = Counter()

    def enter(self, url: str) -> str:
        """A new request entered the scheduler: return its id."""
        ledger_id = f"{self._run}-{next(self._ids)}"
        self.pending[ledger_id] = url
        self.entered += 1
        return ledger_id

    def unenter_duplicate(self, ledger_id: str) -> bool:
        """The new request ``ledger_id`` was filtered as a duplicate, so it never
        entered; False if it is not a pending request."""
        if self.pending.pop(ledger_id, None) is None:
            return False
        self.entered -= 1
        self.duplicates += 1
        return True

    def hand_off(self, ledger_id: str) -> None:
        """Cluster mode: ``ledger_id`` went to the shared frontier; another worker
        (or this one, taking it back) gives it its outcome."""
        if self.pending.pop(ledger_id, None) is not None:
            self.handed_off += 1
        self.responded.pop(ledger_id, None)
        self.dispatched.discard(ledger_id)

    def take(self, ledger_id: str, url: str) -> None:
        """Cluster mode: ``ledger_id`` came from the shared frontier to this worker."""
        if ledger_id not in self.pending:
            self.pending[ledger_id] = url
            self.taken += 1

    def settle(self, ledger_id: str) -> bool:
        """Give ``ledger_id`` its outcome; False if it had one already (the
        caller then records nothing)."""
        self.responded.pop(ledger_id, None)
        self.dispatched.discard(ledger_id)
        if self.pending.pop(ledger_id, None) is not None:
            return True
        if ledger_id.startswith(self._run) or ledger_id in self._resumed_settled:
            return False
        # Given by an earlier run of the same JOBDIR.
        self._resumed_settled.add(ledger_id)
        self.resumed += 1
        return True

    def unaccounted(self, left_for_resume: int) -> int:
        """Outcomes missing (or, if negative, extra) for the ids that entered."""
        # Every id that entered ends exactly once, or is kept in JOBDIR; ids
        # from an earlier run add outcomes without having entered in this one.
        return (
            self.entered
            + self.resumed
            + self.rejected
            + self.taken
            - self.handed_off
            - self.pages
            - self.no_page
            - sum(self.failures.values())
            - left_for_resume
        )
