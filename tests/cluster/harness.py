"""What the cluster crawl tests run: a site on several loopback hosts that measures the
busiest moment per host, and workers as real ``scrapy runspider`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio
from aiohttp import web

from scrapy_asyncfetch._cluster.keys import Keys
from tests.conftest import serve

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SPIDER = Path(__file__).with_name("spider.py")
EXAMPLE_PROJECT = REPO_ROOT / "example_project"


class Site:
    """Pages ``/p/<n>`` on hosts 127.0.0.1..N, each answering after ``latency`` seconds;
    page n links to pages 2n and 2n+1 below ``pages`` (``across``: on the next host).
    ``/r/<n>`` redirects to ``/p/<n>`` of the same host."""

    def __init__(
        self, hosts: int = 4, pages: int = 50, latency: float = 0.05, *, across: bool = False
    ) -> None:
        self.hosts = hosts
        self.across = across
        self.pages = pages
        self.latency = latency
        self.bases: list[str] = []
        self.in_flight: Counter[str] = Counter()
        self.busiest: Counter[str] = Counter()
        #: Fetches per URL.
        self.fetched: Counter[str] = Counter()
        #: When each request arrived, per host (loop time).
        self.arrivals: defaultdict[str, list[float]] = defaultdict(list)

    async def _handle(self, request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        self.in_flight[host] += 1
        self.busiest[host] = max(self.busiest[host], self.in_flight[host])
        self.fetched[str(request.url)] += 1
        self.arrivals[host].append(asyncio.get_running_loop().time())
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight[host] -= 1
        n = int(request.match_info["n"])
        base = ""
        if self.across:
            here = next(i for i, b in enumerate(self.bases) if b.endswith(f"//{request.host}"))
            base = self.bases[(here + 1) % len(self.bases)]
        links = "".join(
            f'<a href="{base}/p/{m}">{m}</a>' for m in (2 * n, 2 * n + 1) if m < self.pages
        )
        return web.Response(
            text=f"<html><body>page {n} {links}</body></html>", content_type="text/html"
        )

    async def _redirect(self, request: web.Request) -> web.Response:
        self.fetched[str(request.url)] += 1
        raise web.HTTPFound(f"/p/{request.match_info['n']}")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Site]:
        async with contextlib.AsyncExitStack() as stack:
            for host in range(1, self.hosts + 1):
                app = web.Application()
                app.router.add_get("/p/{n}", self._handle)
                app.router.add_get("/r/{n}", self._redirect)
                self.bases.append(await stack.enter_async_context(serve(app, f"127.0.0.{host}")))
            yield self

    def urls(self, pages: range | None = None) -> list[str]:
        return [f"{base}/p/{n}" for base in self.bases for n in pages or range(self.pages)]


class Worker:
    """One worker: ``scrapy runspider`` of the cluster test spider (or, with ``project``,
    ``scrapy crawl pages`` in example_project/), its log in ``log_path``."""

    def __init__(
        self,
        root: Path,
        name: str,
        redis_url: str,
        crawl: str,
        *args: str,
        project: bool = False,
    ) -> None:
        self.root = root
        self.name = name
        self.pages_dir = root / name / "pages"
        self.log_path = root / f"{name}.log"
        self.cwd = EXAMPLE_PROJECT if project else root
        run = ["crawl", "pages"] if project else ["runspider", str(SPIDER)]
        self.command = [
            sys.executable,
            "-m",
            "scrapy",
            *run,
            "-s",
            f"ASYNCFETCH_REDIS_URL={redis_url}",
            "-s",
            f"ASYNCFETCH_CLUSTER={crawl}",
            "-s",
            f"ASYNCFETCH_PAGES_DIR={self.pages_dir}",
            *args,
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Worker:
        env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command,
                cwd=self.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        return self

    async def wait(self, within: float = 120) -> str:
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.name} did not finish:\n{self.log()[-4000:]}") from None
        return self.log()

    def worker_id(self) -> str:
        """The id the worker logged, which its outcomes name."""
        for line in self.log().splitlines():
            if "this worker is " in line:
                return line.split("this worker is ")[1].strip()
        raise AssertionError(f"{self.name} logged no worker id:\n{self.log()[-3000:]}")

    def interrupt(self) -> None:
        """SIGINT: Scrapy's graceful stop."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL: no chance to give anything back."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def export(redis_url: str, crawl: str, directory: Path, *args: str) -> tuple[int, str]:
    """Run ``scrapy asyncfetch-export`` (with ``args``); return its exit code and output."""
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "scrapy", "asyncfetch-export", "-o", str(directory)),
        *("-s", f"ASYNCFETCH_REDIS_URL={redis_url}", "-s", f"ASYNCFETCH_CLUSTER={crawl}"),
        *args,
        cwd=directory.parent,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


async def outcomes(url: str, crawl: str) -> dict[str, dict[str, Any]]:
    """The crawl's outcomes in Redis, by request id."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        raw: dict[bytes, bytes] = await client.hgetall(Keys(crawl).outcomes)  # type: ignore[assignment]
    finally:
        await client.aclose()
    return {key.decode(): json.loads(value) for key, value in raw.items()}
