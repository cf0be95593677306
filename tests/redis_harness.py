"""Run a real redis-server for tests: on a free loopback port, in a temporary directory,
always stopped. Usage::

    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        client = server.client()
        server.kill()     # SIGKILL, as a crash would
        server.start()    # the same port and directory: with AOF, the data comes back
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.processes import ManagedProcess
from tests.scrapyd_harness import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 15.0


class RedisServer(ManagedProcess):
    """One redis-server whose files are all under ``root``."""

    def __init__(self, root: Path, *, appendonly: bool = False) -> None:
        self.root = root
        self.appendonly = appendonly
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A blocking client, for test code outside any crawl's event loop."""
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        """Start it (again on the same port, once it has one) and wait until it answers."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        command = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.root),
            # No RDB snapshots: what survives a restart is only what AOF (when on) kept.
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
        ]
        output = open(self.root / "redis.log", "ab")  # noqa: SIM115 the child owns it
        try:
            self.proc = subprocess.Popen(
                command, cwd=self.root, stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        finally:
            output.close()
        deadline = time.monotonic() + START_TIMEOUT
        with self.client() as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited:\n{self.log()}")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, as a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""
