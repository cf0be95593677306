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

Plain Python: the caller serialises requests (``Request.to_dict``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
from typing import Any

from .storage import JsonLines, atomic_write

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
        try:
            with open(self.path, "rb") as lines:
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line torn by the crash
                    if "scheduled" in entry:
                        unfinished[entry["scheduled"]] = entry["request"]
                        dispatched.discard(entry["scheduled"])  # queued again
                    elif "dispatched" in entry:
                        dispatched.add(entry["dispatched"])
                    elif "done" in entry:
                        unfinished.pop(entry["done"], None)
        except FileNotFoundError:
            pass
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
