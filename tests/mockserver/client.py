"""The test side: :class:`MockServer` starts the server process and builds URLs for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import ssl
import subprocess
import sys
import threading
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.mockserver.net import LOOPBACK
from tests.mockserver.process import DEFAULT_HOSTS, DEFAULT_PROXY_AUTH
from tests.mockserver.stats import HostStats
from tests.processes import ManagedProcess

START_TIMEOUT = 20.0


class MockServer(ManagedProcess):
    """Runs the mock server in a subprocess for the duration of a ``with`` block."""

    def __init__(
        self,
        hosts: int = DEFAULT_HOSTS,
        proxy_auth: tuple[str, str] | None = DEFAULT_PROXY_AUTH,
        timeout: float = START_TIMEOUT,
    ) -> None:
        self.hosts = hosts
        self.proxy_auth = proxy_auth
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._info: dict[str, Any] = {}

    def start(self) -> None:
        auth = ":".join(self.proxy_auth) if self.proxy_auth else ""
        command = [sys.executable, "-m", "tests.mockserver", "--hosts", str(self.hosts)]
        command += ["--proxy-auth", auth, "--exit-on-stdin-eof"]
        self._proc = subprocess.Popen(
            command,
            cwd=Path(__file__).resolve().parents[2],  # the repository root
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            self._info = self._read_ready_line(self._proc)
        except BaseException:
            self.stop()
            raise

    def _read_ready_line(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        lines: queue.Queue[bytes] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.timeout)
        except queue.Empty:
            raise RuntimeError(f"mock server not ready after {self.timeout} s") from None
        if not line:
            raise RuntimeError(f"mock server exited early with code {proc.wait()}")
        return json.loads(line)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.returncode = proc.returncode
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    # Addresses -------------------------------------------------------------

    @property
    def http_port(self) -> int:
        return int(self._info["http_port"])

    @property
    def https_port(self) -> int:
        return int(self._info["https_port"])

    @property
    def proxy_port(self) -> int:
        return int(self._info["proxy_port"])

    @property
    def fault_port(self) -> int:
        return int(self._info["fault_port"])

    @property
    def tls_fail_port(self) -> int:
        return int(self._info["tls_fail_port"])

    @property
    def ca_pem(self) -> str:
        return str(self._info["ca_pem"])

    def host(self, index: int = 1) -> str:
        """The IP of host ``index`` (1..hosts): ``127.0.0.<index>``."""
        if not 1 <= index <= self.hosts:
            raise ValueError(f"host index must be in 1..{self.hosts}, got {index}")
        return f"127.0.0.{index}"

    def netloc(self, host: int = 1, https: bool = False) -> str:
        """``ip:port`` as sent in the Host header, i.e. the key in ``stats()["hosts"]``."""
        if https:
            if host != 1:
                raise ValueError("the HTTPS site only listens on 127.0.0.1")
            return f"{LOOPBACK}:{self.https_port}"
        return f"{self.host(host)}:{self.http_port}"

    def url(self, path: str = "/", host: int = 1, https: bool = False) -> str:
        scheme = "https" if https else "http"
        return f"{scheme}://{self.netloc(host, https)}{path}"

    def fault_url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.fault_port}{path}"

    def tls_fail_url(self, path: str = "/") -> str:
        return f"https://{LOOPBACK}:{self.tls_fail_port}{path}"

    def proxy_url(self, auth: tuple[str, str] | None = None) -> str:
        userinfo = f"{auth[0]}:{auth[1]}@" if auth else ""
        return f"http://{userinfo}{LOOPBACK}:{self.proxy_port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the server's CA."""
        return ssl.create_default_context(cafile=self.ca_pem)

    # Control ---------------------------------------------------------------

    def _control(self, path: str, data: bytes | None = None) -> bytes:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(self.url(path), data=data, timeout=10) as response:
            return response.read()

    def stats(self) -> dict[str, Any]:
        return json.loads(self._control("/__stats"))

    def host_stats(self, host: int = 1, https: bool = False) -> dict[str, Any]:
        """Stats of one host, with zeroed defaults if it has not been hit."""
        return self.stats()["hosts"].get(self.netloc(host, https)) or asdict(HostStats())

    async def host_stats_async(self, host: int = 1, https: bool = False) -> dict[str, Any]:
        """:meth:`host_stats` from inside an event loop, which a blocking HTTP call
        would stall (and with it the crawl under test)."""
        return await asyncio.to_thread(self.host_stats, host, https)

    def reset(self) -> None:
        self._control("/__reset", data=b"")
