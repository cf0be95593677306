"""A journal of requests in flight, so a crawl killed mid-way loses none of them.

Scrapy's JOBDIR persists the scheduler's queue and the dupefilter's seen set,
but a request taken off the queue and still downloading when the process dies
is in neither place that brings it back: it is in the seen set, so it is never
scheduled again. This journal notes each request as it leaves the scheduler and
again when it ends; whatever started and never ended is handed back on the next
run with the same JOBDIR.

Plain Python: the caller serialises requests (``Request.to_dict``).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from typing import Any

from .storage import JsonLines, atomic_write

JOURNAL_NAME = "asyncfetch-inflight.jsonl"


class InFlightJournal:
    def __init__(self, jobdir: str) -> None:
        self.path = os.path.join(jobdir, JOURNAL_NAME)
        self._file = JsonLines(self.path)

    def open(self) -> list[dict[str, Any]]:
        """Start a run: return the requests (as dicts) a previous run left
        unfinished, and begin an empty journal.

        The caller must have put them back in the (persistent) queue before it
        notes anything new, so a crash right after this loses nothing.
        """
        unfinished = self._unfinished()
        atomic_write(self.path, b"", durable=True)
        self._file.open()
        return unfinished

    def _unfinished(self) -> list[dict[str, Any]]:
        started: dict[str, dict[str, Any]] = {}
        try:
            with open(self.path, "rb") as lines:
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line torn by the crash
                    if "done" in entry:
                        started.pop(entry["done"], None)
                    elif "started" in entry:
                        started[entry["started"]] = entry
        except FileNotFoundError:
            return []
        # Pickle, as Scrapy's own disk queues in the same JOBDIR: request
        # dicts may hold bytes and arbitrary meta values.
        return [pickle.loads(base64.b64decode(e["request"])) for e in started.values()]

    def started(self, key: str, request: dict[str, Any]) -> None:
        blob = base64.b64encode(pickle.dumps(request, protocol=4)).decode("ascii")
        self._file.append({"started": key, "request": blob})

    def done(self, key: str) -> None:
        self._file.append({"done": key})

    def close(self) -> None:
        self._file.close()
