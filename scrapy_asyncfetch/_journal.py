"""A journal of unfinished requests, so a crawl killed mid-way loses none of them.

Scrapy's JOBDIR keeps the scheduler's queue and the dupefilter's seen set, but
only a clean close makes that queue readable again: after a kill (SIGKILL, OOM,
power) the queue's bookkeeping was never written, while every URL is already
in the seen set, so nothing brings those requests back. Requests taken off the
queue and still downloading are lost even after a clean stop.

The journal notes each request when it is scheduled (again for a retry or
redirect: the latest copy wins), when it leaves the scheduler, and when it
ends. A marker file says whether the last run closed cleanly. The next run
gets back what must be scheduled again: after a clean close, the requests that
had left the queue unfinished (the rest are in Scrapy's queue); after a crash,
everything unfinished (and Scrapy's queue must be discarded).

:class:`Journal` is plain Python: its caller serialises requests. :class:`JobdirRecovery`
wires it to a crawl: it serialises them (``Request.to_dict``), discards Scrapy's queue
after a crash and schedules the unfinished requests again.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import pickle
import shutil
from typing import TYPE_CHECKING, Any

from scrapy.utils.request import request_from_dict

from . import _compat
from .storage import JsonLines, atomic_write, iter_json_lines

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

JOURNAL_NAME = "asyncfetch-journal.jsonl"
RUNNING_MARKER = "asyncfetch-running"


class Journal:
    def __init__(self, jobdir: str) -> None:
        self.jobdir = jobdir
        self.path = os.path.join(jobdir, JOURNAL_NAME)
        self._marker = os.path.join(jobdir, RUNNING_MARKER)
        self._file = JsonLines(self.path)
        #: Did the previous run with this JOBDIR end without closing?
        self.crashed = os.path.exists(self._marker)

    def open(self) -> list[dict[str, Any]]:
        """Start a run: return the requests (as dicts) to schedule again.

        The journal is rewritten with every unfinished request, so a crash of
        this run still finds those that stay in Scrapy's queue.
        """
        os.makedirs(self.jobdir, exist_ok=True)
        unfinished, dispatched = self._read()
        atomic_write(
            self.path,
            b"".join(
                (json.dumps({"scheduled": key, "request": blob}) + "\n").encode("ascii")
                for key, blob in unfinished.items()
            ),
            durable=True,
        )
        with open(self._marker, "w"):
            pass
        self._file.open()
        again = (
            unfinished
            if self.crashed
            else {key: unfinished[key] for key in dispatched & unfinished.keys()}
        )
        # Pickle, as Scrapy's own disk queues in the same JOBDIR: request
        # dicts may hold bytes and arbitrary meta values.
        return [pickle.loads(base64.b64decode(blob)) for blob in again.values()]

    def _read(self) -> tuple[dict[str, str], set[str]]:
        unfinished: dict[str, str] = {}
        dispatched: set[str] = set()
        # A line torn by the crash is skipped.
        for entry in iter_json_lines(self.path):
            if "scheduled" in entry:
                unfinished[entry["scheduled"]] = entry["request"]
                dispatched.discard(entry["scheduled"])  # queued again
            elif "dispatched" in entry:
                dispatched.add(entry["dispatched"])
            elif "done" in entry:
                unfinished.pop(entry["done"], None)
        return unfinished, dispatched

    def scheduled(self, key: str, request: dict[str, Any]) -> None:
        blob = base64.b64encode(pickle.dumps(request, protocol=4)).decode("ascii")
        self._file.append({"scheduled": key, "request": blob})

    def dispatched(self, key: str) -> None:
        self._file.append({"dispatched": key})

    def done(self, key: str) -> None:
        self._file.append({"done": key})

    def close(self) -> None:
        """End the run cleanly (Scrapy has persisted its queue by now)."""
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._marker)


# -- JOBDIR recovery in a crawl ------------------------------------------------


class JobdirRecovery:
    """The journal of a crawl with ``JOBDIR``."""

    def __init__(self, crawler: Crawler, jobdir: str) -> None:
        self.crawler = crawler
        self.journal = Journal(jobdir)
        self._unjournalable_warned = False
        if self.journal.crashed:
            # Scrapy's queue is unreadable after a kill, and its URLs are in the
            # seen set: rebuilt from the journal instead (before the scheduler
            # opens it, which is why this happens when the ledger is created).
            logger.warning(
                "The last run with JOBDIR %s did not close cleanly: rescheduling its "
                "unfinished requests from the journal",
                jobdir,
            )
            shutil.rmtree(os.path.join(jobdir, "requests.queue"), ignore_errors=True)

    def reschedule_unfinished(self) -> None:
        """Open the journal and schedule again what the last run left unfinished."""
        unfinished = self.journal.open()
        spider = self.crawler.spider
        for as_dict in unfinished:
            request = request_from_dict(as_dict, spider=spider)
            # In the JOBDIR's seen set, or lost from it by the kill (its file's
            # unflushed tail): let this copy in, and filter start()'s copy.
            _compat.mark_seen(self.crawler, request)
            request.dont_filter = True
            self.crawler.engine.crawl(request)
        if unfinished:
            logger.info(
                "Rescheduled %d unfinished request(s) of the last run from the journal",
                len(unfinished),
            )
            self.crawler.stats.set_value("asyncfetch/ledger/requeued_in_flight", len(unfinished))

    def scheduled(self, ledger_id: str, request: Request) -> None:
        try:
            as_dict = request.to_dict(spider=self.crawler.spider)
        except ValueError as exc:  # a callback that is not a spider method
            if not self._unjournalable_warned:
                self._unjournalable_warned = True
                logger.warning("Cannot journal %s for JOBDIR resumption: %s", request, exc)
            return
        self.journal.scheduled(ledger_id, as_dict)

    def dispatched(self, ledger_id: str) -> None:
        self.journal.dispatched(ledger_id)

    def done(self, ledger_id: str) -> None:
        self.journal.done(ledger_id)

    def close(self) -> None:
        self.journal.close()
