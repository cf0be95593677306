"""Socket and raw HTTP helpers shared by the fault server and the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
_LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")


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


def listen(host: str, port: int) -> socket.socket:
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
        socks = [listen(addresses[0], 0)]
        port = socks[0].getsockname()[1]
        try:
            for address in addresses[1:]:
                socks.append(listen(address, port))
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
