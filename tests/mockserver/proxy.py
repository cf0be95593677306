"""A forward proxy: absolute-form requests and CONNECT tunnels, optionally with Basic auth."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from urllib.parse import urlsplit

from tests.mockserver.net import (
    RawRequest,
    close_writer,
    is_allowed_target,
    raw_response,
    read_request_body,
    read_request_head,
)
from tests.mockserver.stats import Stats

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
