"""The impolite-to-crawl sites of one mix, all in this one process (aiohttp, loopback only).

``python -m benchmarks.politeness.server --mix limited [--scale F] [--seed N]``

Every host of the mix listens on its own 127.0.0.x address, all on the same port. Once they
are bound, one JSON line ``{"port", "hosts": {name: address}}`` is printed on stdout. When
stdin reaches end of file (the orchestrator closes it, or goes away) or on SIGTERM/SIGINT,
one JSON line of server-side counters is printed and the process exits.

Times in the counters are seconds after the crawl's first request to any host (``t0``).
A host with ``down_for`` has its socket bound but not listening until ``t0 + down_for``: the
kernel refuses connections to it (RST), as for a host whose server is down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import random
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from benchmarks.politeness.mixes import MIX_NAMES, BadKind, Behaviour, HostSpec, build_mix

#: What the gzip bomb decompresses to (DOWNLOAD_MAXSIZE is 10 MB in the faults mix).
BOMB_SIZE = 50 * 1024 * 1024
#: How long a stopping server lets handlers finish (stalled ones never do).
SHUTDOWN_TIMEOUT = 0.5
_PORT_ATTEMPTS = 20


class Clock:
    """Seconds since the crawl's first request to any host."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.started = asyncio.Event()

    def now(self) -> float:
        if self.t0 is None:
            self.t0 = time.monotonic()
            self.started.set()
        return time.monotonic() - self.t0


@dataclass
class HostCounters:
    requests: int = 0
    status: dict[str, int] = field(default_factory=dict)  # good pages (/p/...)
    bad_status: dict[str, int] = field(default_factory=dict)  # bad URLs (/bad/...)
    in_service: int = 0
    busiest: int = 0
    first_request_s: float | None = None
    last_ok_s: float | None = None
    listening_from_s: float | None = 0.0
    ok_per_second: list[int] = field(default_factory=list)
    refused_per_second: list[int] = field(default_factory=list)  # 429 and 503

    def started(self, now: float) -> None:
        self.requests += 1
        self.in_service += 1
        self.busiest = max(self.busiest, self.in_service)
        if self.first_request_s is None:
            self.first_request_s = now

    def finished(self, outcome: str, now: float, *, good: bool) -> None:
        self.in_service -= 1
        counts = self.status if good else self.bad_status
        counts[outcome] = counts.get(outcome, 0) + 1
        if good and outcome == "200":
            self.last_ok_s = now
            _bump(self.ok_per_second, now)
        elif outcome in ("429", "503"):
            _bump(self.refused_per_second, now)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "status": dict(sorted(self.status.items())),
            "bad_status": dict(sorted(self.bad_status.items())),
            "busiest": self.busiest,
            "first_request_s": self.first_request_s,
            "last_ok_s": self.last_ok_s,
            "listening_from_s": self.listening_from_s,
            "ok_per_second": self.ok_per_second,
            "refused_per_second": self.refused_per_second,
        }


def _bump(bins: list[int], now: float) -> None:
    second = int(now)
    if len(bins) <= second:
        bins.extend([0] * (second + 1 - len(bins)))
    bins[second] += 1


def _page(host: str, path: str) -> web.Response:
    body = (
        f"<!DOCTYPE html><html><head><title>{host} {path}</title></head>"
        f"<body><h1>Host {host}</h1><p>This is {path} on host {host}.</p></body></html>\n"
    )
    return web.Response(text=body, content_type="text/html")


class HostSite:
    """One host: its behaviour for good pages, the bad URLs, and its counters."""

    def __init__(self, spec: HostSpec, clock: Clock, rng: random.Random, bomb: bytes) -> None:
        self.spec = spec
        self.clock = clock
        self.rng = rng
        self.bomb = bomb
        self.counters = HostCounters(listening_from_s=None if spec.down_for else 0.0)
        self.tokens = float(spec.burst)
        self.refilled_at = time.monotonic()
        self.accepted = 0  # CAPACITY_LIMITED: requests being served, refusals excluded

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.counters.started(self.clock.now())
        good = request.path.startswith("/p/")
        # If the client goes away before the answer (a stall always ends so).
        outcome = "stall" if f"/{BadKind.STALL}/" in request.path else "cancelled"
        try:
            response = await self._dispatch(request)
            outcome = str(response.status)
            return response
        except _Reset:
            outcome = "reset"
            raise asyncio.CancelledError from None
        finally:
            self.counters.finished(outcome, self.clock.now(), good=good)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "p":
            return await self._good(request.path)
        if len(parts) == 3 and parts[0] == "bad":
            return await self._bad(request, parts[1])
        return web.Response(status=404, text="not found")

    async def _good(self, path: str) -> web.Response:
        behaviour = self.spec.behaviour
        if behaviour is Behaviour.RATE_LIMITED and not self._take_token():
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        if behaviour is Behaviour.CAPACITY_LIMITED:
            return await self._within_capacity(path)
        await asyncio.sleep(self.rng.uniform(*self.spec.latency))
        return _page(self.spec.name, path)

    def _take_token(self) -> bool:
        now = time.monotonic()
        elapsed = now - self.refilled_at
        self.tokens = min(float(self.spec.burst), self.tokens + elapsed * self.spec.rate)
        self.refilled_at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    async def _within_capacity(self, path: str) -> web.Response:
        if self.accepted >= self.spec.capacity:
            return web.Response(status=503, text="busy")
        self.accepted += 1
        try:
            # Slower the more it serves: latency x (1 + in service / capacity).
            await asyncio.sleep(self.spec.latency[0] * (1 + self.accepted / self.spec.capacity))
            return _page(self.spec.name, path)
        finally:
            self.accepted -= 1

    async def _bad(self, request: web.Request, kind: str) -> web.StreamResponse:
        await asyncio.sleep(self.rng.uniform(*self.spec.latency))
        if kind == BadKind.TOO_MANY:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        if kind == BadKind.UNAVAILABLE:
            return web.Response(status=503, text="unavailable")
        if kind == BadKind.ERROR:
            return web.Response(status=500, text="error")
        if kind == BadKind.STALL:
            await asyncio.Future()  # until the client gives up (handler cancellation)
        if kind == BadKind.RESET:
            _reset(request)
        if kind == BadKind.GZIP_BOMB:
            headers = {"Content-Encoding": "gzip", "Content-Type": "text/html"}
            return web.Response(body=self.bomb, headers=headers)
        if kind == BadKind.REDIRECT_LOOP:
            hop = int(request.query.get("hop", "0")) + 1
            return web.Response(status=302, headers={"Location": f"{request.path}?hop={hop}"})
        return web.Response(status=404, text="not found")


class _Reset(Exception):
    """The connection was reset on purpose: no answer is sent."""


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0) instead of answering."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    raise _Reset


def _bind_all(addresses: list[str]) -> tuple[int, list[socket.socket]]:
    """Bind one socket per address, all on the same free port."""
    for _ in range(_PORT_ATTEMPTS):
        sockets: list[socket.socket] = []
        port = 0
        try:
            for address in addresses:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, port))
                port = sock.getsockname()[1]
        except OSError:
            for sock in sockets:
                sock.close()
            continue
        return port, sockets
    raise RuntimeError(f"no port free on all of {addresses}")


class MixServer:
    def __init__(self, mix_name: str, scale: float, seed: int) -> None:
        self.mix = build_mix(mix_name, scale)
        self.clock = Clock()
        rng = random.Random(seed)
        bomb = gzip.compress(b"\0" * BOMB_SIZE, compresslevel=9) if mix_name == "faults" else b""
        self.sites = [HostSite(spec, self.clock, rng, bomb) for spec in self.mix.hosts]
        self.runners: list[web.AppRunner] = []
        self._delayed: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        port, sockets = _bind_all([s.spec.address for s in self.sites])
        for site, sock in zip(self.sites, sockets, strict=True):
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", site.handle)
            # handler_cancellation: a stalled handler ends when the client hangs up.
            runner = web.AppRunner(
                app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
            )
            await runner.setup()
            self.runners.append(runner)
            if site.spec.down_for:
                self._delayed.append(asyncio.create_task(self._listen_later(site, runner, sock)))
            else:
                await web.SockSite(runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT).start()
        return port

    async def _listen_later(
        self, site: HostSite, runner: web.AppRunner, sock: socket.socket
    ) -> None:
        await self.clock.started.wait()
        await asyncio.sleep(max(0.0, site.spec.down_for - self.clock.now()))
        await web.SockSite(runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT).start()
        site.counters.listening_from_s = round(self.clock.now(), 3)

    def stats(self) -> dict[str, Any]:
        return {
            "mix": self.mix.name,
            "hosts": {s.spec.name: s.counters.as_dict() for s in self.sites},
            "crawl_seconds": round(self.clock.now(), 3) if self.clock.t0 else None,
        }

    async def stop(self) -> None:
        for task in self._delayed:
            task.cancel()
        for runner in self.runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()


async def _wait_for_stop() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def read_to_eof() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    # A daemon thread, so a stop by signal does not wait for stdin to close.
    threading.Thread(target=read_to_eof, daemon=True).start()
    await stop.wait()


async def serve(mix_name: str, scale: float, seed: int) -> None:
    server = MixServer(mix_name, scale, seed)
    port = await server.start()
    hosts = {s.spec.name: s.spec.address for s in server.sites}
    print(json.dumps({"port": port, "hosts": hosts}), flush=True)
    await _wait_for_stop()
    print(json.dumps(server.stats()), flush=True)
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mix", choices=MIX_NAMES, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.mix, args.scale, args.seed))


if __name__ == "__main__":
    main()
