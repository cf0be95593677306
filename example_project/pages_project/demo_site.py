"""A small, deterministic website served on 127.0.0.1..127.0.0.4, for ``scrapy crawl pages``.

It runs inside the crawl's own asyncio loop, so the demo needs no second process and nothing off
this machine. The same port is bound on four loopback addresses: Linux routes the whole 127/8 to
the loopback interface, and four addresses make four hosts, hence four download slots, which is
what lets a default run show the per-host caps at work.

Each host has an index page linking to its pages. A few pages are slow, and a few links fail in
each way the plugin has to handle: 404 (not retried), 500 (retried, then given up) and a
connection reset (retried, then given up).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

logger = logging.getLogger(__name__)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")


@dataclass(frozen=True)
class DemoLayout:
    """What each host serves; the defaults make a run of about ten seconds."""

    pages_per_host: int = 75
    # One page in `slow_every` sleeps 0.3-1.0 s, so the per-host caps show in the timings.
    slow_every: int = 6
    # Every page of these hosts is slow: the other hosts finish long before them, which shows
    # that one slow site does not hold the rest of the crawl back.
    slow_hosts: tuple[str, ...] = ("127.0.0.4",)
    # How many links of each failing kind each host's index carries.
    failures_per_kind: int = 2
    robots_txt: str = "User-agent: *\nDisallow: /private/\n"

    def slow_delay(self, host: str | None, number: int) -> float:
        """Seconds page `number` of `host` sleeps before answering (0 for most pages)."""
        if host not in self.slow_hosts and number % self.slow_every != self.slow_every - 1:
            return 0.0
        return 0.3 + (number % 8) * 0.1


@dataclass
class HostLoad:
    """What one host served: the crawl's per-host cap, as the server saw it."""

    served: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0


@dataclass
class DemoSite:
    """The demo web app; `await start()` inside a running loop, `await stop()` when done."""

    layout: DemoLayout = field(default_factory=DemoLayout)
    hosts: tuple[str, ...] = HOSTS
    port: int = 0
    load: dict[str, HostLoad] = field(default_factory=dict)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    @property
    def start_urls(self) -> list[str]:
        """The index page of every host."""
        return [f"http://{host}:{self.port}/" for host in self.hosts]

    async def start(self) -> None:
        app = web.Application(middlewares=[self._count])
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/robots.txt", self._robots),
                web.get("/page/{number:\\d+}", self._page),
                web.get("/private/{name}", self._page_not_for_robots),
                web.get("/broken/{number:\\d+}", self._broken),
                web.get("/reset/{number:\\d+}", self._reset),
            ]
        )
        # No access log: a line per request would bury the crawl's own log.
        # A short shutdown timeout: a cancelled crawl may leave a slow page in flight, and
        # nobody is waiting for its answer any more.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sockets = _bind_same_port(self.hosts)
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        self._runner = runner
        self.port = sockets[0].getsockname()[1]
        layout = self.layout
        logger.info(
            "Demo site serving %s: %d pages each, one in %d slow (0.3-1.0 s) and all of them on "
            "%s; each index also links to %d pages that answer 404, %d that answer 500, %d "
            "that reset the connection, and one that robots.txt disallows",
            ", ".join(self.start_urls),
            layout.pages_per_host,
            layout.slow_every,
            ", ".join(layout.slow_hosts),
            layout.failures_per_kind,
            layout.failures_per_kind,
            layout.failures_per_kind,
        )

    async def stop(self) -> None:
        if self._runner is None:
            return
        runner, self._runner = self._runner, None
        # Logged before the first await: the crawl's other closing handlers run meanwhile, and
        # the ledger's summary should be the last word.
        logger.info(
            "Demo site stopping; requests served, and most at once, per host: %s",
            ", ".join(
                f"{host}: {load.served} (at most {load.peak_in_flight} at once)"
                for host, load in sorted(self.load.items())
            ),
        )
        await runner.cleanup()

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        load = self.load.setdefault(request.url.host or "?", HostLoad())
        load.served += 1
        load.in_flight += 1
        load.peak_in_flight = max(load.peak_in_flight, load.in_flight)
        try:
            return await handler(request)
        finally:
            load.in_flight -= 1

    @staticmethod
    def _links(numbers: range | list[int]) -> str:
        return "\n".join(f'<li><a href="/page/{n}">page {n}</a></li>' for n in numbers)

    async def _index(self, request: web.Request) -> web.Response:
        layout = self.layout
        failing = range(layout.failures_per_kind)
        other_hosts = "".join(
            f'<li><a href="http://{host}:{self.port}/">{host}</a></li>'
            for host in self.hosts
            if host != request.url.host
        )
        body = (
            f"<h1>Demo host {request.url.host}</h1>\n"
            f"<ul>{self._links(range(layout.pages_per_host))}</ul>\n"
            "<h2>Links that fail</h2><ul>\n"
            # /missing/ has no route: aiohttp answers 404 by itself.
            + "".join(f'<li><a href="/missing/{n}">404</a></li>' for n in failing)
            + "".join(f'<li><a href="/broken/{n}">500</a></li>' for n in failing)
            + "".join(f'<li><a href="/reset/{n}">reset</a></li>' for n in failing)
            + '<li><a href="/private/secret">disallowed by robots.txt</a></li>\n'
            # Other hosts are linked but not followed: the spider stays on the host it is on.
            + f"</ul><h2>Other hosts</h2><ul>{other_hosts}</ul>"
        )
        return _html(f"Demo index {request.url.host}", body)

    async def _robots(self, request: web.Request) -> web.Response:
        return web.Response(text=self.layout.robots_txt, content_type="text/plain")

    async def _page(self, request: web.Request) -> web.Response:
        number = int(request.match_info["number"])
        if number >= self.layout.pages_per_host:
            raise web.HTTPNotFound()
        delay = self.layout.slow_delay(request.url.host, number)
        if delay:
            await asyncio.sleep(delay)
        neighbours = [n % self.layout.pages_per_host for n in (number + 1, number + 2)]
        # Sizes vary so that the written pages are not all alike.
        filler = "<p>" + "Lorem ipsum dolor sit amet. " * (5 + number % 40) + "</p>"
        body = (
            f"<h1>Page {number} on {request.url.host}</h1>\n"
            f"<p>Served after {delay:.1f} s.</p>\n{filler}\n"
            f'<ul>{self._links(neighbours)}<li><a href="/">index</a></li></ul>'
        )
        return _html(f"Demo page {number}", body)

    async def _page_not_for_robots(self, request: web.Request) -> web.Response:
        return _html("Private", "<p>A polite crawler never reaches this page.</p>")

    async def _broken(self, request: web.Request) -> web.Response:
        raise web.HTTPInternalServerError(text="demo: always broken")

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout turns close() into a TCP RST: a real
                # "connection reset by peer" on the client, not a clean end of stream.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # Nothing can be sent any more; aiohttp drops the response of a closed connection.
        return web.Response(status=500)


def _html(title: str, body: str) -> web.Response:
    head = f"<!DOCTYPE html>\n<html><head><title>{title}</title></head>"
    page = f"{head}<body>\n{body}\n</body></html>\n"
    return web.Response(text=page, content_type="text/html")


def _bind_same_port(hosts: tuple[str, ...], attempts: int = 20) -> list[socket.socket]:
    """Sockets bound to one free port, one per host (aiohttp makes them listen).

    The first host picks a free port; another program may hold that port on another loopback
    address, so a clash means closing everything and trying a new port.
    """
    for _ in range(attempts):
        sockets: list[socket.socket] = []
        port = 0
        try:
            for host in hosts:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((host, port))
                port = sock.getsockname()[1]
        except OSError:
            for sock in sockets:
                sock.close()
            continue
        return sockets
    raise OSError(f"no port free on all of {', '.join(hosts)} after {attempts} attempts")
