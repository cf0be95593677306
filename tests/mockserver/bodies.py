"""The deterministic bodies the server sends, so tests can check them byte for byte."""

from __future__ import annotations

import functools
import gzip
import struct
import zlib

import brotli

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


def compress(encoding: str, data: bytes) -> bytes | None:
    if encoding == "gzip":
        return gzip.compress(data, mtime=0)
    if encoding == "deflate":
        return zlib.compress(data)  # HTTP "deflate" is the zlib format (RFC 1950)
    if encoding == "br":
        return brotli.compress(data)
    return None
