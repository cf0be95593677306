"""What the cluster crawl tests run: a site on several loopback hosts that measures the
busiest moment per host, and workers as real ``scrapy runspider`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio
from aiohttp import web

from scrapy_asyncfetch._cluster.keys import Keys
from tests.conftest import serve

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SPIDER = Path(__file__).with_name("spider.py")


class Site:
    """Pages ``/p/<n>`` on hosts 127.0.0.1..N, each answering after ``latency`` seconds;
    page n links to pages 2n and 2n+1 below ``pages``."""

    def __init__(self, hosts: int = 4, pages: int = 50, latency: float = 0.05) -> None:
        self.hosts = hosts
        self.pages = pages
        self.latency = latency
        self.bases: list[str] = []
        self.in_flight: Counter[str] = Counter()
        self.busiest: Counter[str] = Counter()
        #: Fetches per URL.
        self.fetched: Counter[str] = Counter()

    async def _handle(self, request: web.Request) -> web.Response:
        host = request.host.split(":")[0]
        self.in_flight[host] += 1
        self.busiest[host] = max(self.busiest[host], self.in_flight[host])
        self.fetched[str(request.url)] += 1
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight[host] -= 1
        n = int(request.match_info["n"])
        links = "".join(f'<a href="/p/{m}">{m}</a>' for m in (2 * n, 2 * n + 1) if m < self.pages)
        return web.Response(
            text=f"<html><body>page {n} {links}</body></html>", content_type="text/html"
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Site]:
        async with contextlib.AsyncExitStack() as stack:
            for host in range(1, self.hosts + 1):
                app = web.Application()
                app.router.add_get("/p/{n}", self._handle)
                self.bases.append(await stack.enter_async_context(serve(app, f"127.0.0.{host}")))
            yield self

    def urls(self, pages: range | None = None) -> list[str]:
        return [f"{base}/p/{n}" for base in self.bases for n in pages or range(self.pages)]


class Worker:
    """One ``scrapy runspider`` of the cluster test spider, its log in ``log_path``."""

    def __init__(self, root: Path, name: str, redis_url: str, crawl: str, *args: str) -> None:
        self.root = root
        self.name = name
        self.pages_dir = root / name / "pages"
        self.log_path = root / f"{name}.log"
        self.command = [
            sys.executable,
            "-m",
            "scrapy",
            "runspider",
            str(SPIDER),
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
                cwd=self.root,
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

    def kill(self) -> None:
        """SIGKILL: no chance to give anything back."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def outcomes(url: str, crawl: str) -> dict[str, dict[str, Any]]:
    """The crawl's outcomes in Redis, by request id."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        raw: dict[bytes, bytes] = await client.hgetall(Keys(crawl).outcomes)  # type: ignore[assignment]
    finally:
        await client.aclose()
    return {key.decode(): json.loads(value) for key, value in raw.items()}
