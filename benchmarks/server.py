"""Throughput-oriented local HTTP/1.1 server for the benchmarks.

Run as its own process (``python -m benchmarks.server``) so that its CPU use never counts
against the client being measured. It is a raw ``asyncio.Protocol`` rather than a framework
because it has to stay far from saturation while a client fetches thousands of pages/s:
per request it only finds the end of the headers, picks a pre-built response and schedules
one timer for the simulated latency. ``--workers K`` starts K processes that each listen on
the same port with ``SO_REUSEPORT``, so the kernel spreads connections between them.

Once every worker listens, one JSON line ``{"host", "port", "pids"}`` is printed on stdout.
The server stops on SIGTERM/SIGINT, when its parent process goes away, or after
``--max-seconds`` whatever happens, so it can never outlive a benchmark run by long.

URLs are ``/p/{i}``: every page is distinct, so Scrapy's duplicate filter drops none.
Anything else (``/robots.txt``...) gets a 404.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import multiprocessing
import os
import random
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.latency import LatencySpec

# Give up on a connection whose request head grows past this without ending.
_MAX_HEAD = 64 * 1024
# How often workers and the supervisor check whether they should stop.
_WATCH_INTERVAL = 1.0


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    workers: int
    latency: LatencySpec
    body_size: int
    error_rate: float
    seed: int
    max_seconds: float


def _response(status: bytes, body: bytes, keep_alive: bool) -> bytes:
    head = [
        b"HTTP/1.1 " + status,
        b"Content-Type: text/html; charset=utf-8",
        b"Content-Length: " + str(len(body)).encode(),
    ]
    if not keep_alive:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _page_body(size: int) -> bytes:
    start = b"<!DOCTYPE html><html><head><title>bench page</title></head><body><p>"
    end = b"</p></body></html>\n"
    return start + b"x" * max(0, size - len(start) - len(end)) + end


class _Responses:
    """Every response the server can send, built once: (status, keep-alive) -> bytes."""

    def __init__(self, body_size: int) -> None:
        page = _page_body(body_size)
        error = b"<html><body>simulated server error</body></html>\n"
        missing = b"<html><body>not found</body></html>\n"
        self.ok = {ka: _response(b"200 OK", page, ka) for ka in (True, False)}
        self.error = {
            ka: _response(b"500 Internal Server Error", error, ka) for ka in (True, False)
        }
        self.missing = {ka: _response(b"404 Not Found", missing, ka) for ka in (True, False)}


class _BenchProtocol(asyncio.Protocol):
    """One client connection. Responses leave in request order even when a later request's
    latency expires first (HTTP/1.1 pipelining rules), hence the queue of pending slots."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        responses: _Responses,
        sample_latency: Callable[[], float],
        is_error: Callable[[], bool],
    ) -> None:
        self._loop = loop
        self._responses = responses
        self._sample_latency = sample_latency
        self._is_error = is_error
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._skip_body = 0  # bytes of a request body still to discard
        # Each slot is [response bytes or None while waiting, keep_alive].
        self._pending: deque[list[bytes | bool | None]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while True:
            if self._skip_body:
                skipped = min(self._skip_body, len(buffer))
                buffer = buffer[skipped:]
                self._skip_body -= skipped
                if self._skip_body:
                    break
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD and self._transport is not None:
                    self._transport.close()
                break
            head = buffer[:end]
            buffer = buffer[end + 4 :]
            self._handle_head(head)
        self._buffer = buffer

    def _handle_head(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        parts = request_line.split(b" ")
        target = parts[1] if len(parts) > 1 else b"/"
        version = parts[2] if len(parts) > 2 else b"HTTP/1.0"
        lower = head.lower()
        if version == b"HTTP/1.1":
            keep_alive = b"connection: close" not in lower
        else:
            keep_alive = b"connection: keep-alive" in lower
        length_at = lower.find(b"content-length:")
        if length_at >= 0:
            value_end = lower.find(b"\r\n", length_at)
            value = lower[length_at + 15 : value_end if value_end >= 0 else None]
            with contextlib.suppress(ValueError):
                self._skip_body = int(value.strip())

        responses = self._responses
        if not target.startswith(b"/p/"):
            response = responses.missing[keep_alive]
        elif self._is_error():
            response = responses.error[keep_alive]
        else:
            response = responses.ok[keep_alive]

        slot: list[bytes | bool | None] = [None, keep_alive]
        self._pending.append(slot)
        delay = self._sample_latency()
        if delay > 0:
            self._loop.call_later(delay, self._ready, slot, response)
        else:
            self._ready(slot, response)

    def _ready(self, slot: list[bytes | bool | None], response: bytes) -> None:
        transport = self._transport
        if transport is None:  # the client went away while we were "thinking"
            return
        slot[0] = response
        pending = self._pending
        while pending and pending[0][0] is not None:
            data, keep_alive = pending.popleft()
            assert isinstance(data, bytes)
            transport.write(data)
            if not keep_alive:
                transport.close()
                self._transport = None
                pending.clear()
                return


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def _serve(config: ServerConfig, index: int, ready: multiprocessing.Queue[int]) -> None:
    loop = asyncio.get_running_loop()
    responses = _Responses(config.body_size)
    # Distinct but reproducible random streams per worker.
    sample_latency = config.latency.sampler(seed=config.seed * 1000 + index)
    error_rng = random.Random(config.seed * 1000 + index + 500)
    error_rate = config.error_rate

    def is_error() -> bool:
        return error_rate > 0 and error_rng.random() < error_rate

    sock = _listening_socket(config.host, config.port)
    server = await loop.create_server(
        lambda: _BenchProtocol(loop, responses, sample_latency, is_error), sock=sock
    )
    ready.put(os.getpid())
    # Stop by ourselves if the supervisor disappears or the lifetime is over.
    parent = os.getppid()
    deadline = time.monotonic() + config.max_seconds
    stop = asyncio.Event()

    def watchdog() -> None:
        if os.getppid() != parent or time.monotonic() >= deadline:
            stop.set()
        else:
            loop.call_later(_WATCH_INTERVAL, watchdog)

    watchdog()
    async with server:
        await stop.wait()


def _worker_main(config: ServerConfig, index: int, ready: multiprocessing.Queue[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(_serve(config, index, ready))


def _reserve_port(host: str) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket on a free port, so the workers can all
    bind that same port; a socket that does not listen is never handed connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


def run_server(config: ServerConfig) -> None:
    """Start the workers, announce them on stdout, and supervise until told to stop."""
    reservation = None
    if config.port == 0:
        reservation = _reserve_port(config.host)
        config = ServerConfig(**{**config.__dict__, "port": reservation.getsockname()[1]})
    context = multiprocessing.get_context("fork")
    ready: multiprocessing.Queue[int] = context.Queue()
    workers = [
        context.Process(target=_worker_main, args=(config, i, ready), daemon=True)
        for i in range(config.workers)
    ]
    for worker in workers:
        worker.start()
    pids = [ready.get(timeout=30) for _ in workers]
    if reservation is not None:
        reservation.close()

    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(json.dumps({"host": config.host, "port": config.port, "pids": pids}), flush=True)

    parent = os.getppid()
    deadline = time.monotonic() + config.max_seconds
    while not stop and os.getppid() == parent and time.monotonic() < deadline:
        if not all(w.is_alive() for w in workers):
            break
        time.sleep(_WATCH_INTERVAL / 4)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=5)


def _loopback(host: str) -> str:
    # The benchmark must only ever generate traffic on this machine.
    if not ipaddress.ip_address(host).is_loopback:
        raise argparse.ArgumentTypeError(f"{host} is not a loopback address")
    return host


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", type=_loopback, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=1, help="SO_REUSEPORT processes")
    parser.add_argument("--latency", type=float, default=0.0, help="fixed latency, seconds")
    parser.add_argument(
        "--latency-dist",
        type=LatencySpec.parse,
        default=None,
        help="distribution instead of --latency: exp:0.1, uniform:0.05:0.15, normal:0.1:0.02",
    )
    parser.add_argument("--body-size", type=int, default=4096, help="bytes per 200 page")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 500")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=4 * 3600)
    args = parser.parse_args(argv)
    latency = args.latency_dist or LatencySpec("fixed", (args.latency,))
    if not 0.0 <= args.error_rate <= 1.0:
        parser.error("--error-rate must be within [0, 1]")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return ServerConfig(
        host=args.host,
        port=args.port,
        workers=args.workers,
        latency=latency,
        body_size=args.body_size,
        error_rate=args.error_rate,
        seed=args.seed,
        max_seconds=args.max_seconds,
    )


if __name__ == "__main__":
    run_server(parse_args())
