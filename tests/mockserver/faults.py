"""A raw asyncio server for misbehaviour aiohttp cannot produce, and a port that
answers a TLS handshake with garbage."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

from tests.mockserver.bodies import body_bytes
from tests.mockserver.net import abort_with_rst, close_writer, raw_response, read_request_head
from tests.mockserver.stats import Stats

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
