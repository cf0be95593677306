"""The failures file: one JSON Lines record per failed request, appended as it
happens so that a crash keeps them."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .storage import JsonLines

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

FAILURES_NAME = "failures.jsonl"


def failure_record(
    url: str, reason: str, message: str, *, attempts: int, status: int | None
) -> dict[str, Any]:
    """One line of the failures file (and, in cluster mode, one outcome in Redis)."""
    return {
        "url": url,
        "reason": reason,
        "message": message[:500],
        "attempts": attempts,
        "status": status,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


class FailuresFile:
    """Appends failure records to ``path``. Once a write fails (a full disk) it
    says so once, stops writing and calls ``on_broken``, since what fails from
    then on cannot be recorded."""

    def __init__(
        self,
        path: str,
        *,
        beside_pages: bool,
        close_reason: str,
        on_broken: Callable[[], None],
    ) -> None:
        self.path = path
        # In the pages directory, whose problems the page writer reports itself.
        self._beside_pages = beside_pages
        self._close_reason = close_reason
        self._on_broken = on_broken
        self._file: JsonLines | None = None

    @staticmethod
    def choose_path(failures_file: str | None, pages_dir: str | None) -> str | None:
        """``ASYNCFETCH_FAILURES_FILE``, else ``failures.jsonl`` in the pages directory."""
        if failures_file:
            return failures_file
        return os.path.join(pages_dir, FAILURES_NAME) if pages_dir else None

    def open(self) -> bool:
        """Open for appending; False (logged) if the file cannot be written."""
        file = JsonLines(self.path)
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            file.open()
        except OSError as exc:
            self._log_error(exc)
            return False
        self._file = file
        return True

    def append(self, record: dict[str, Any]) -> None:
        """Append a record made by :func:`failure_record`."""
        if self._file is None:
            return
        try:
            self._file.append(record)
        except OSError as exc:
            self.close()
            self._log_error(exc)
            self._on_broken()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _log_error(self, exc: OSError) -> None:
        logger.log(
            logging.INFO if self._beside_pages else logging.ERROR,
            "Cannot write the failures file %s (%s): %s; closing the spider (%s)",
            self.path,
            "ASYNCFETCH_PAGES_DIR" if self._beside_pages else "ASYNCFETCH_FAILURES_FILE",
            exc.strerror or exc,
            self._close_reason,
        )
