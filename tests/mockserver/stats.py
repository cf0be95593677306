"""What the server saw: per host, requests in flight and when each arrived; the proxy's log."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("mockserver")


@dataclass
class HostStats:
    count: int = 0
    inflight: int = 0
    max_inflight: int = 0
    starts: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


class Stats:
    """Per-Host request accounting plus the proxy log; shared by every listener."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostStats] = {}
        self.proxy: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def track(self, host: str, path: str) -> Iterator[None]:
        entry = self.hosts.setdefault(host, HostStats())
        entry.count += 1
        entry.inflight += 1
        entry.max_inflight = max(entry.max_inflight, entry.inflight)
        entry.starts.append(time.monotonic())
        entry.paths.append(path)
        try:
            yield
        finally:
            entry.inflight -= 1

    def reset(self) -> None:
        self.hosts = {}
        self.proxy = []

    def as_json(self) -> dict[str, Any]:
        return {
            "hosts": {host: asdict(entry) for host, entry in self.hosts.items()},
            "proxy": list(self.proxy),
        }
