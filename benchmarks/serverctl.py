"""Start, watch and stop the benchmark server (``benchmarks.server``) from the orchestrator.

The orchestrator also samples the server workers' CPU time around every run: a worker
busy close to 100% of a core would mean the server, not the client, set the pace.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from types import TracebackType

import psutil

from benchmarks.latency import LatencySpec

_START_TIMEOUT = 30.0


def stop_process(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """SIGTERM a process still running, SIGKILL it if it has not ended after ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerHandle:
    def __init__(
        self,
        *,
        latency: LatencySpec,
        body_size: int,
        error_rate: float,
        workers: int,
        cwd: Path,
        log_path: Path,
    ) -> None:
        self.latency = latency
        self._cmd = [
            sys.executable,
            "-m",
            "benchmarks.server",
            "--latency-dist",
            str(latency),
            "--body-size",
            str(body_size),
            "--error-rate",
            str(error_rate),
            "--workers",
            str(workers),
        ]
        self._cwd = cwd
        self._log_path = log_path
        self._proc: subprocess.Popen[str] | None = None
        self._workers: list[psutil.Process] = []
        self.base_url = ""

    def __enter__(self) -> ServerHandle:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self._log_path.open("w")
        self._proc = subprocess.Popen(
            self._cmd, cwd=self._cwd, stdout=subprocess.PIPE, stderr=log, text=True
        )
        log.close()  # the child has its own copy of the descriptor
        assert self._proc.stdout is not None
        readable, _, _ = select.select([self._proc.stdout], [], [], _START_TIMEOUT)
        line = self._proc.stdout.readline() if readable else ""
        if not line:
            self.stop()
            raise RuntimeError(f"benchmark server did not start; see {self._log_path}")
        info = json.loads(line)
        self.base_url = f"http://{info['host']}:{info['port']}"
        self._workers = [psutil.Process(pid) for pid in info["pids"]]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def worker_count(self) -> int:
        return len(self._workers)

    def cpu_seconds(self) -> list[float]:
        """User + system CPU seconds consumed so far by each worker."""
        seconds = []
        for worker in self._workers:
            try:
                times = worker.cpu_times()
            except psutil.Error:
                seconds.append(float("nan"))
                continue
            seconds.append(times.user + times.system)
        return seconds

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is None:
            return
        stop_process(self._proc)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None
