"""Shared fixtures: a real loopback server, and crawls run on the test reactor."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest
import pytest_twisted
from aiohttp import web
from scrapy import Spider
from scrapy.crawler import Crawler
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.test import get_crawler

from tests.mockserver import MockServer

#: What every test crawl runs with: the add-on, quiet logs, no telnet, and the
#: test resolver so that no test ever asks a real DNS server.
BASE_SETTINGS: dict[str, Any] = {
    "ADDONS": {"scrapy_asyncfetch.Addon": 300},
    "ASYNCFETCH_RESOLVER": "tests.resolver.LoopbackResolver",
    "LOG_LEVEL": "DEBUG",
    "TELNETCONSOLE_ENABLED": False,
    "RETRY_ENABLED": False,
    "ROBOTSTXT_OBEY": False,
}


def asyncio_test(fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """Run an ``async def`` test as an asyncio task on the reactor's loop, so it
    may await asyncio futures (pytest-twisted alone drives coroutines with Twisted)."""

    @pytest_twisted.ensureDeferred
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await deferred_from_coro(fn(*args, **kwargs))

    return wrapper


async def crawl(
    spider_cls: type[Spider], settings: dict[str, Any] | None = None, **kwargs: Any
) -> Crawler:
    """Run one crawl to its end and return the crawler (stats, spider)."""
    crawler = get_crawler(spider_cls, {**BASE_SETTINGS, **(settings or {})})
    await crawler.crawl_async(**kwargs)
    return crawler


@pytest.fixture(scope="session")
def mockserver() -> Iterator[MockServer]:
    with MockServer(hosts=6) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_server_stats(request: pytest.FixtureRequest) -> None:
    if "mockserver" in request.fixturenames:
        request.getfixturevalue("mockserver").reset()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A loopback port whose listen backlog is full, so a new connection hangs
    in connect (the kernel drops its SYN) until the client gives up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in (*fillers, server):
        sock.close()


@pytest.fixture
def no_unclosed(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if aiohttp or asyncio complained about unclosed resources."""
    caplog.set_level(logging.DEBUG)
    yield
    bad = [r.getMessage() for r in caplog.records if "Unclosed" in r.getMessage()]
    assert not bad, bad


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0, interval: float = 0.02
) -> bool:
    """Poll ``condition`` until it holds or ``within`` seconds passed; return
    whether it held. A deadline, not a fixed sleep: a loaded machine only makes
    it slower, never wrong."""
    deadline = loop_time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result or loop_time() >= deadline:
            return result
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serve(
    app_or_handler: web.Application | Callable[[web.Request], Awaitable[web.StreamResponse]],
    address: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[str]:
    """Serve an aiohttp app, or one handler for every path, on ``address:port``
    (0: a free port) for the block; yield its base URL."""
    if isinstance(app_or_handler, web.Application):
        app = app_or_handler
    else:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", app_or_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    try:
        yield f"http://{address}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
