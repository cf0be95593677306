"""Loopback test server for scrapy-asyncfetch.

Run it as a separate process from the repository root::

    python -m tests.mockserver [--hosts N] [--proxy-auth user:pass]

Once every listener is up it prints one JSON line on stdout (ports and the CA path) and then
serves until SIGTERM/SIGINT. It runs, all on loopback addresses only:

* an aiohttp app on the same port of 127.0.0.1 .. 127.0.0.N, plus an HTTPS site on 127.0.0.1
  whose certificate chains to a throwaway trustme CA;
* a raw asyncio "fault" server for misbehaviour aiohttp cannot produce;
* a "TLS fail" port that answers a TLS handshake with plain-text garbage;
* a forward proxy (absolute-form requests and CONNECT tunnels), optionally with Basic auth.

Test code uses :class:`MockServer`, which starts the process and builds URLs for it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import functools
import gzip
import ipaddress
import json
import logging
import os
import queue
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import brotli
import trustme
from aiohttp import web

from tests.processes import ManagedProcess

LOOPBACK = "127.0.0.1"
DEFAULT_HOSTS = 4
DEFAULT_PROXY_AUTH = ("user", "pass")
START_TIMEOUT = 20.0

COMPRESSED_TEXT = (
    b"scrapy-asyncfetch compressed body: the quick brown fox jumps over the lazy dog.\n" * 20
)
PAGE_COUNT = 50
TYPED_BODIES: dict[str, tuple[str, bytes]] = {
    "/html": (
        "text/html; charset=utf-8",
        b"<!DOCTYPE html><html><head><title>html</title></head>"
        b"<body><p>hello html</p></body></html>",
    ),
    "/json": ("application/json", b'{"hello": "json", "items": [1, 2, 3]}'),
    "/xml": (
        "application/xml",
        b'<?xml version="1.0" encoding="utf-8"?><root><item>hello xml</item></root>',
    ),
    "/octet": ("application/octet-stream", bytes(range(256))),
}

_PATTERN = bytes(range(251))  # prime length, so chunk boundaries never line up with it
_PIECE = 256 * 1024  # what /bytes/{n} writes at a time
_CONTROL_PATHS = frozenset({"/__stats", "/__reset"})
_LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")

log = logging.getLogger("mockserver")


# --------------------------------------------------------------------------- bodies


def body_bytes(n: int) -> bytes:
    """The deterministic body served by ``/bytes/{n}`` and ``/stream/{n}``."""
    return body_slice(0, n)


def body_slice(start: int, end: int) -> bytes:
    """``body_bytes(n)[start:end]`` for any ``n >= end``, without building the rest."""
    offset = start % len(_PATTERN)
    length = end - start
    repeats = (offset + length) // len(_PATTERN) + 1
    return (_PATTERN * repeats)[offset : offset + length]


def page_links(i: int) -> list[int]:
    """Page numbers linked from ``/page/{i}``; every page is reachable from page 0."""
    targets = {(i + 1) % PAGE_COUNT, (2 * i + 1) % PAGE_COUNT, (3 * i + 2) % PAGE_COUNT}
    return sorted(targets - {i})


def page_body(i: int) -> bytes:
    """The HTML served by ``/page/{i}``."""
    links = "".join(f'<li><a href="/page/{j}">page {j}</a></li>' for j in page_links(i))
    return (
        f"<!DOCTYPE html><html><head><title>Page {i}</title></head>"
        f"<body><h1>Page {i}</h1><ul>{links}</ul></body></html>"
    ).encode()


@functools.cache
def gzip_bomb_body(size_mib: int) -> bytes:
    """A gzip member that inflates to ``size_mib`` MiB of zeros.

    Compressing a GiB of zeros directly takes seconds, so one MiB is compressed and the
    full-flushed (byte-aligned, history-free) deflate segment is repeated instead.
    """
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(size_mib):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, (size_mib << 20) & 0xFFFFFFFF)
    return header + segment * size_mib + tail + trailer


def _compress(encoding: str, data: bytes) -> bytes | None:
    if encoding == "gzip":
        return gzip.compress(data, mtime=0)
    if encoding == "deflate":
        return zlib.compress(data)  # HTTP "deflate" is the zlib format (RFC 1950)
    if encoding == "br":
        return brotli.compress(data)
    return None


# --------------------------------------------------------------------------- stats


@dataclass
class HostStats:
    count: int = 0
    inflight: int = 0
    max_inflight: int = 0
    starts: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


class Stats:
    """Per-Host request accounting plus the proxy log; shared by every listener."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostStats] = {}
        self.proxy: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def track(self, host: str, path: str) -> Iterator[None]:
        entry = self.hosts.setdefault(host, HostStats())
        entry.count += 1
        entry.inflight += 1
        entry.max_inflight = max(entry.max_inflight, entry.inflight)
        entry.starts.append(time.monotonic())
        entry.paths.append(path)
        try:
            yield
        finally:
            entry.inflight -= 1

    def reset(self) -> None:
        self.hosts = {}
        self.proxy = []

    def as_json(self) -> dict[str, Any]:
        return {
            "hosts": {host: asdict(entry) for host, entry in self.hosts.items()},
            "proxy": list(self.proxy),
        }


# --------------------------------------------------------------------------- socket helpers


def abort_with_rst(transport: asyncio.WriteTransport | None) -> None:
    """Drop the connection with a TCP RST instead of a FIN."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_same_port(addresses: Sequence[str], attempts: int = 20) -> list[socket.socket]:
    """Listening sockets on one free port shared by every address."""
    for _ in range(attempts):
        socks = [_listen(addresses[0], 0)]
        port = socks[0].getsockname()[1]
        try:
            for address in addresses[1:]:
                socks.append(_listen(address, port))
        except OSError:
            for sock in socks:
                sock.close()
            continue
        return socks
    raise OSError(f"no port free on all of {list(addresses)}")


def is_allowed_target(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(host) in _LOOPBACK_NET
    except ValueError:
        return False


# --------------------------------------------------------------------------- raw HTTP helpers


@dataclass
class RawRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


async def read_request_head(reader: asyncio.StreamReader) -> RawRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return RawRequest(parts[0], parts[1], parts[2], headers)


async def read_request_body(reader: asyncio.StreamReader, request: RawRequest) -> bytes:
    """The request body, de-chunked; only Content-Length and chunked framing are supported."""
    if (request.header("Transfer-Encoding") or "").lower() == "chunked":
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return b"".join(chunks)
    length = int(request.header("Content-Length") or 0)
    return await reader.readexactly(length) if length else b""


def raw_response(
    status: int, reason: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- aiohttp app

STATS_KEY = web.AppKey("stats", Stats)
routes = web.RouteTableDef()


@web.middleware
async def track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path in _CONTROL_PATHS:
        return await handler(request)
    with request.app[STATS_KEY].track(request.headers.get("Host", ""), request.path):
        return await handler(request)


@routes.get("/__stats")
async def stats_view(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS_KEY].as_json())


@routes.post("/__reset")
async def reset_view(request: web.Request) -> web.Response:
    request.app[STATS_KEY].reset()
    return web.Response(text="reset")


@routes.route("*", "/echo")
@routes.route("*", "/echo/{tail:.*}")
async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    raw_path = request.raw_path
    headers = [
        [name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers
    ]
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "query_string": raw_path.partition("?")[2],
            "url": raw_path,
            "headers": headers,
            "body_b64": base64.b64encode(body).decode("ascii"),
            # The client's address, to check which local address it bound to.
            "remote": request.remote,
        }
    )


@routes.route("*", r"/status/{code:\d+}")
async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if code in (204, 304):
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}")


@routes.route("*", "/delay/{seconds}")
async def delay(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.match_info["seconds"]))
    return web.Response(text="ok")


@routes.route("*", r"/redirect/{n:\d+}")
async def redirect(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    if n == 0:
        return web.Response(text="done")
    return web.Response(status=302, headers={"Location": f"/redirect/{n - 1}"})


@routes.route("*", "/redirect-to")
async def redirect_to(request: web.Request) -> web.Response:
    if "url" not in request.query:
        return web.Response(status=400, text="url parameter required")
    code = int(request.query.get("status", "302"))
    return web.Response(status=code, headers={"Location": request.query["url"]})


@routes.route("*", "/redirect-loop")
async def redirect_loop(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/redirect-loop"})


@routes.route("*", "/compressed/{encoding}")
async def compressed(request: web.Request) -> web.Response:
    encoding = request.match_info["encoding"]
    body = _compress(encoding, COMPRESSED_TEXT)
    if body is None:
        raise web.HTTPNotFound(text=f"unknown encoding {encoding}")
    headers = {"Content-Type": "text/plain", "Content-Encoding": encoding}
    return web.Response(body=body, headers=headers)


@routes.route("*", "/setcookie")
async def setcookie(request: web.Request) -> web.Response:
    name = request.query.get("name", "name")
    value = request.query.get("value", "value")
    return web.Response(text="ok", headers={"Set-Cookie": f"{name}={value}; Path=/"})


@routes.route("*", "/cookies")
async def cookies(request: web.Request) -> web.Response:
    return web.Response(text="; ".join(request.headers.getall("Cookie", [])))


@routes.route("*", r"/bytes/{n:\d+}")
async def bytes_view(request: web.Request) -> web.StreamResponse:
    # Headers first, then the body piece by piece, as a server sends a large
    # file: a client refusing the announced size is not kept waiting while a
    # loaded machine builds 64 MiB.
    size = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    for start in range(0, size, _PIECE):
        await response.write(body_slice(start, min(size, start + _PIECE)))
    await response.write_eof()
    return response


@routes.route("*", r"/stream/{n:\d+}")
async def stream(request: web.Request) -> web.StreamResponse:
    size = int(request.match_info["n"])
    chunk = max(1, int(request.query.get("chunk", "4096")))
    pause = float(request.query.get("delay", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, size, chunk):
        if start:
            await asyncio.sleep(pause)
        await response.write(body_slice(start, min(size, start + chunk)))
    await response.write_eof()
    return response


@routes.route("*", "/drip")
async def drip(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("bytes", "10"))
    interval = float(request.query.get("interval", "0.5"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = count
    await response.prepare(request)
    # aiohttp holds the headers back until the first body write, so the first byte goes at once.
    for i in range(count):
        if i:
            await asyncio.sleep(interval)
        await response.write(b"*")
    await response.write_eof()
    return response


@routes.route("*", "/headers-multi")
async def headers_multi(request: web.Request) -> web.Response:
    response = web.Response(text="multi")
    response.headers.add("Set-Cookie", "first=1; Path=/")
    response.headers.add("Set-Cookie", "second=2; Path=/")
    response.headers.add("X-Multi", "a")
    response.headers.add("X-Multi", "b")
    return response


async def typed_body(request: web.Request) -> web.Response:
    content_type, body = TYPED_BODIES[request.path]
    return web.Response(body=body, headers={"Content-Type": content_type})


@routes.route("*", r"/page/{i:\d+}")
async def page(request: web.Request) -> web.Response:
    body = page_body(int(request.match_info["i"]))
    return web.Response(body=body, headers={"Content-Type": "text/html; charset=utf-8"})


@routes.route("*", "/reset-mid-body")
async def reset_mid_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = 100_000
    await response.prepare(request)
    await response.write(body_bytes(1000))
    await asyncio.sleep(0.2)  # let the client take in headers and data before the RST
    abort_with_rst(request.transport)
    return response


@routes.route("*", "/truncated")
async def truncated(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(body_bytes(10))
    if request.transport is not None:
        request.transport.close()  # a FIN after the pending bytes are flushed
    return response


@routes.route("*", r"/retry-after/{code:\d+}")
async def retry_after(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {"Retry-After": request.query["after"]} if "after" in request.query else {}
    return web.Response(status=code, text=f"status {code}", headers=headers)


@routes.route("*", "/bad-gzip")
async def bad_gzip(request: web.Request) -> web.Response:
    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    return web.Response(body=b"this is definitely not gzip data" * 4, headers=headers)


@routes.route("*", "/gzip-bomb")
async def gzip_bomb(request: web.Request) -> web.Response:
    size_mib = int(request.query.get("size", "1024"))
    body = await asyncio.to_thread(gzip_bomb_body, size_mib)
    headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"}
    return web.Response(body=body, headers=headers)


@routes.route("*", "/endless")
async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = body_bytes(64 * 1024)
    with contextlib.suppress(ConnectionError):
        while True:
            await response.write(chunk)
            # write() only suspends when the transport is paused; a fast reader would
            # otherwise starve the event loop.
            await asyncio.sleep(0)
    return response


def make_app(stats: Stats) -> web.Application:
    app = web.Application(middlewares=[track_requests])
    app[STATS_KEY] = stats
    app.router.add_routes(routes)
    for path in TYPED_BODIES:
        app.router.add_route("*", path, typed_body)
    return app


# --------------------------------------------------------------------------- raw fault server

FaultHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _fault_reset_before_headers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    abort_with_rst(writer.transport)


async def _fault_never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        pass


async def _fault_trickle_headers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    for byte in b"HTTP/1.1 200 OK\r\n":
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.5)
    writer.write(b"Content-Length: 2\r\nConnection: close\r\n\r\nok")


async def _fault_malformed_status(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"HTTP/1.1 abc DEF\r\n\r\n")


async def _fault_malformed_headers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\n"
        b"This header line has no colon\r\n"
        b"Bad\x01Na me: v\x00al\x7fue\r\n"
        b"Content-Length: 5\r\n"
        b"Connection: close\r\n\r\n"
        b"hello"
    )


async def _fault_not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"\x00\xffNOT-HTTP\x00" + random.Random(1234).randbytes(256))


async def _fault_short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + body_bytes(100))


async def _fault_keepalive_then_drop(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    # Answers once and keeps the connection open, then closes it when the next
    # request arrives on it: a keep-alive connection gone stale under the client.
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
    await writer.drain()
    await read_request_head(reader)


async def _fault_not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(raw_response(404, "Not Found", b"no such fault"))


FAULTS: dict[str, FaultHandler] = {
    "/reset-before-headers": _fault_reset_before_headers,
    "/never-answer": _fault_never_answer,
    "/trickle-headers": _fault_trickle_headers,
    "/malformed-status": _fault_malformed_status,
    "/malformed-headers": _fault_malformed_headers,
    "/not-http": _fault_not_http,
    "/short-body": _fault_short_body,
    "/keepalive-then-drop": _fault_keepalive_then_drop,
}


async def handle_fault_connection(
    stats: Stats, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        request = await read_request_head(reader)
        if request is None:
            return
        handler = FAULTS.get(request.path, _fault_not_found)
        with stats.track(request.header("Host") or "", request.path):
            await handler(reader, writer)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        await close_writer(writer)


async def handle_tls_fail_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        # Read the ClientHello first: closing with unread data would send an RST rather
        # than letting the client see the garbage.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(65536), 2.0)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\nthis port does not speak TLS\r\n")
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        await close_writer(writer)


# --------------------------------------------------------------------------- forward proxy

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "transfer-encoding"}
)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Copy both ways until either side stops sending, then drop both."""
    tasks = [asyncio.create_task(pipe(a[0], b[1])), asyncio.create_task(pipe(b[0], a[1]))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def force_close_header(head: bytes) -> bytes:
    """Rewrite a response head so the client does not reuse the proxy connection."""
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    kept = [
        line
        for line in lines[1:]
        if line.partition(b":")[0].strip().lower() not in {b"connection", b"keep-alive"}
    ]
    return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n"


class ForwardProxy:
    """HTTP forward proxy limited to loopback targets; one request per client connection."""

    def __init__(self, stats: Stats, auth: tuple[str, str] | None) -> None:
        self._stats = stats
        self._auth = auth

    def authorized(self, request: RawRequest) -> bool:
        if self._auth is None:
            return True
        scheme, _, encoded = (request.header("Proxy-Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True).decode("latin-1")
        except (binascii.Error, ValueError):
            return False
        return credentials == ":".join(self._auth)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await read_request_head(reader)
            if request is None:
                return
            body = b"" if request.method == "CONNECT" else await read_request_body(reader, request)
            authorized = self.authorized(request)
            self._stats.proxy.append(
                {"method": request.method, "target": request.target, "authorized": authorized}
            )
            if not authorized:
                challenge = [("Proxy-Authenticate", 'Basic realm="mockproxy"')]
                writer.write(raw_response(407, "Proxy Authentication Required", b"", challenge))
            elif request.method == "CONNECT":
                await self._tunnel(request, reader, writer)
            else:
                await self._forward(request, body, reader, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            await close_writer(writer)

    async def _connect(
        self, host: str, port: int, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if not is_allowed_target(host):
            writer.write(raw_response(403, "Forbidden", b"only loopback targets are allowed"))
            return None
        try:
            return await asyncio.open_connection(host, port)
        except OSError as exc:
            writer.write(raw_response(502, "Bad Gateway", str(exc).encode()))
            return None

    async def _tunnel(
        self, request: RawRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, _, port = request.target.rpartition(":")
        if not port.isdigit():
            writer.write(raw_response(400, "Bad Request", b"CONNECT needs host:port"))
            return
        upstream = await self._connect(host, int(port), writer)
        if upstream is None:
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            await splice((reader, writer), upstream)
        finally:
            await close_writer(upstream[1])

    async def _forward(
        self,
        request: RawRequest,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        url = urlsplit(request.target)
        if url.scheme != "http" or not url.hostname:
            writer.write(raw_response(400, "Bad Request", b"absolute-form http:// target needed"))
            return
        upstream = await self._connect(url.hostname, url.port or 80, writer)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        try:
            up_writer.write(self._upstream_head(request, url.path, url.query, len(body)) + body)
            head = await up_reader.readuntil(b"\r\n\r\n")
            writer.write(force_close_header(head))
            await splice((reader, writer), upstream)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            writer.write(raw_response(502, "Bad Gateway", repr(exc).encode()))
        finally:
            await close_writer(up_writer)

    @staticmethod
    def _upstream_head(request: RawRequest, path: str, query: str, body_length: int) -> bytes:
        target = (path or "/") + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in request.headers if k.lower() not in _HOP_BY_HOP]
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        if request.header("Host") is None:
            headers.insert(0, ("Host", urlsplit(request.target).netloc))
        if body_length or request.header("Content-Length") is not None:
            headers.append(("Content-Length", str(body_length)))
        headers += [("Via", "mockproxy"), ("Connection", "close")]
        lines = [f"{request.method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --------------------------------------------------------------------------- server process


def make_tls(workdir: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (written to ``workdir/ca.pem``) and a server context it signed."""
    ca = trustme.CA()
    cert = ca.issue_cert(LOOPBACK, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_pem = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return ca_pem, context


async def wait_for_stop(stop_on_stdin_eof: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if stop_on_stdin_eof:
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)
    await stop.wait()


async def serve(hosts: int, proxy_auth: tuple[str, str] | None, stop_on_stdin_eof: bool) -> None:
    stats = Stats()
    workdir = Path(tempfile.mkdtemp(prefix="mockserver-"))
    runner = web.AppRunner(
        make_app(stats), handler_cancellation=True, shutdown_timeout=1.0, access_log=None
    )
    servers: list[asyncio.Server] = []
    try:
        ca_pem, server_tls = make_tls(workdir)
        await runner.setup()
        http_socks = bind_same_port([f"127.0.0.{i}" for i in range(1, hosts + 1)])
        https_sock = _listen(LOOPBACK, 0)
        for sock in http_socks:
            await web.SockSite(runner, sock).start()
        await web.SockSite(runner, https_sock, ssl_context=server_tls).start()

        proxy = ForwardProxy(stats, proxy_auth)
        fault = functools.partial(handle_fault_connection, stats)
        for callback in (fault, handle_tls_fail_connection, proxy.handle):
            servers.append(await asyncio.start_server(callback, LOOPBACK, 0))
        fault_port, tls_fail_port, proxy_port = (s.sockets[0].getsockname()[1] for s in servers)

        ready = {
            "http_port": http_socks[0].getsockname()[1],
            "https_port": https_sock.getsockname()[1],
            "proxy_port": proxy_port,
            "fault_port": fault_port,
            "tls_fail_port": tls_fail_port,
            "ca_pem": str(ca_pem),
            "hosts": hosts,
        }
        print(json.dumps(ready), flush=True)
        await wait_for_stop(stop_on_stdin_eof)
    finally:
        for server in servers:
            server.close()
        await runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


def parse_proxy_auth(value: str) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected user:pass (or '' for no auth)")
    return user, password


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=DEFAULT_HOSTS, choices=range(1, 255))
    parser.add_argument(
        "--proxy-auth",
        type=parse_proxy_auth,
        default=DEFAULT_PROXY_AUTH,
        help="user:pass required by the proxy; '' disables proxy auth",
    )
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="also stop when stdin closes (so the server dies with its parent)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="mockserver %(name)s: %(message)s")
    asyncio.run(serve(args.hosts, args.proxy_auth, args.exit_on_stdin_eof))


# --------------------------------------------------------------------------- client side


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
            cwd=Path(__file__).resolve().parent.parent,
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


if __name__ == "__main__":
    main()
