"""What every runner shares: its command line, the URL list, and how it measures and reports.

A runner is a separate process started by the orchestrator. It fetches ``/p/0 .. /p/{N-1}``
from the benchmark server with concurrency C, measures only the fetching part, and prints
exactly one JSON line on stdout (anything else goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunnerArgs:
    base_url: str
    pages: int
    concurrency: int
    timeout: float


def parse_args(description: str, argv: list[str] | None = None) -> RunnerArgs:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8080")
    parser.add_argument("--pages", type=int, required=True, help="N: URLs to fetch")
    parser.add_argument("--concurrency", type=int, required=True, help="C")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request seconds")
    args = parser.parse_args(argv)
    return RunnerArgs(args.base_url.rstrip("/"), args.pages, args.concurrency, args.timeout)


def page_urls(base_url: str, pages: int) -> Iterator[str]:
    """The URL list every runner fetches: distinct paths, generated lazily so that holding
    the list never shows up in a runner's memory figure."""
    for i in range(pages):
        yield f"{base_url}/p/{i}"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    try:
        import psutil  # noqa: PLC0415 - optional; only the bench extra installs it
    except ImportError:
        return float("nan")
    return float(psutil.Process().memory_info().rss) / (1024 * 1024)


@dataclass
class Snapshot:
    """Wall clock and process CPU time (user + sys of every thread) at one instant."""

    wall: float
    user: float
    sys: float

    @classmethod
    def take(cls) -> Snapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(time.perf_counter(), usage.ru_utime, usage.ru_stime)


@dataclass
class RunResult:
    runner: str
    pages_requested: int
    concurrency: int
    pages_ok: int
    errors: int
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_mb: float
    rss_start_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s

    @classmethod
    def between(
        cls,
        runner: str,
        args: RunnerArgs,
        start: Snapshot,
        end: Snapshot,
        *,
        pages_ok: int,
        errors: int,
        rss_start_mb: float,
        concurrency: int | None = None,
        wall_s: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> RunResult:
        return cls(
            runner=runner,
            pages_requested=args.pages,
            concurrency=args.concurrency if concurrency is None else concurrency,
            pages_ok=pages_ok,
            errors=errors,
            wall_s=end.wall - start.wall if wall_s is None else wall_s,
            cpu_user_s=end.user - start.user,
            cpu_sys_s=end.sys - start.sys,
            peak_rss_mb=peak_rss_mb(),
            rss_start_mb=rss_start_mb,
            extra=extra or {},
        )

    def emit(self) -> None:
        payload = asdict(self)
        payload["cpu_s"] = self.cpu_s
        # default=repr: add-on settings may hold classes or other non-JSON values.
        print(json.dumps(payload, default=repr), flush=True)
