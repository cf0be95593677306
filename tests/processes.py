"""A base for the servers tests run in their own processes."""

from __future__ import annotations

from typing import Self


class ManagedProcess:
    """``with`` starts it, and stops it even when the block fails."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
