"""WARC/1.1 archives of every HTTP exchange the crawl makes.

``WarcWriter`` (an extension the add-on enables when ``ASYNCFETCH_WARC_DIR`` is set) writes,
for every response the downloader produces, a ``request`` and a ``response`` record linked by
``WARC-Concurrent-To``: status line and headers as the server sent them (the real protocol
version and reason), the body before any decompression (``Content-Encoding`` kept; the
chunking undone and ``Transfer-Encoding`` left out to match), so both digests verify with
warcio and any other WARC tool. Records are gzipped one by one and written in a thread of
their own; each file is ``<name>.warc.gz.open`` while written (locked), renamed when full
(``ASYNCFETCH_WARC_MAX_SIZE``) or at close. A later run in the same directory finds the
``.open`` files nobody holds (a crashed or killed writer's), cuts a torn last record and
renames them, so every ``.warc.gz`` there is whole.
"""

from __future__ import annotations

import asyncio
import fcntl
import http
import logging
import os
import socket
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import IO, TYPE_CHECKING, Any, Self

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.httpobj import urlparse_cached
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from ._config import RefusedComponent, SettingsError, get_int
from ._shutdown import close_crawl_soon
from .pipelines import WRITE_ERROR_REASON

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

#: Where the client leaves the exchange as it happened, for the writer (only when WARC is on).
EXCHANGE_KEY = "_asyncfetch_exchange"
SUFFIX = ".warc.gz"
OPEN_SUFFIX = SUFFIX + ".open"
_READ_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class Exchange:
    """What a Scrapy response does not keep of an exchange: the reason phrase, the
    response headers as received (order, case, repeats) and the request headers as sent."""

    reason: str
    response_headers: tuple[tuple[bytes, bytes], ...]
    request_headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class WarcEntry:
    """One exchange, ready for the writer thread."""

    url: str
    method: str
    target: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: bytes
    protocol: str
    status: int
    reason: str
    response_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    ip_address: str | None
    date: str

    @classmethod
    def from_exchange(cls, request: Request, response: Response) -> WarcEntry:
        exchange: Exchange | None = request.meta.pop(EXCHANGE_KEY, None)
        if exchange is None:
            # Fetched by Scrapy's own handlers (asyncfetch off for it): rebuilt from the
            # Scrapy objects, which keep headers by name, not as sent.
            reason = http.HTTPStatus(response.status).phrase if response.status in _STATUSES else ""
            exchange = Exchange(
                reason=reason,
                response_headers=tuple(
                    (name, value) for name, values in response.headers.items() for value in values
                ),
                request_headers=tuple(
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, values in request.headers.items()
                    for value in values
                ),
            )
        parts = urlparse_cached(request)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(
            url=request.url,
            method=request.method,
            target=target,
            request_headers=exchange.request_headers,
            request_body=request.body,
            protocol=response.protocol or "HTTP/1.1",
            status=response.status,
            reason=exchange.reason,
            response_headers=exchange.response_headers,
            body=response.body,
            ip_address=str(response.ip_address) if response.ip_address else None,
            date=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        )


_STATUSES = {status.value for status in http.HTTPStatus}


class _ExactHeaders(StatusAndHeaders):
    """HTTP headers written byte for byte as given, not re-encoded by warcio.

    Header bytes travel as latin-1 text, which maps every byte to one character and back.
    """

    def __init__(
        self, first_line: str, statusline: str, headers: list[tuple[str, str]], protocol: str
    ) -> None:
        super().__init__(statusline, headers, protocol=protocol)
        lines = [first_line, *(f"{name}: {value}" for name, value in headers), "", ""]
        self._raw = "\r\n".join(lines).encode("latin-1")

    def compute_headers_buffer(self, header_filter: Any = None) -> None:
        self.headers_buff = self._raw


def _response_headers(entry: WarcEntry) -> _ExactHeaders:
    kept = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in entry.response_headers
        # The body is stored de-chunked, so the header that announced chunks goes too.
        if name.lower() != b"transfer-encoding"
    ]
    statusline = f"{entry.status} {entry.reason}".rstrip()
    return _ExactHeaders(f"{entry.protocol} {statusline}", statusline, kept, entry.protocol)


def _request_headers(entry: WarcEntry) -> _ExactHeaders:
    statusline = f"{entry.method} {entry.target} {entry.protocol}"
    return _ExactHeaders(statusline, statusline, list(entry.request_headers), entry.protocol)


# --------------------------------------------------------------------------- the files


class WarcFiles:
    """One writer's WARC files in a directory: opened, filled, rotated and closed in turn.

    Plain Python, for one thread at a time. Names carry the time, a serial, the host and
    the process id, so writers on several machines or processes never collide.
    """

    def __init__(self, directory: str, prefix: str, max_size: int, info: dict[str, str]) -> None:
        self.directory = directory
        self.prefix = prefix
        self.max_size = max_size
        self.info = info
        self._host = socket.gethostname().replace("-", "_") or "host"
        self._serial = 0
        self._file: IO[bytes] | None = None
        self._path = ""
        self._writer: WARCWriter | None = None
        #: Every file finished so far.
        self.finished: list[str] = []

    def open(self) -> list[str]:
        """Create the directory; repair the files crashed writers left; return those."""
        os.makedirs(self.directory, exist_ok=True)
        return repair_abandoned(self.directory)

    def write(self, entries: Iterable[WarcEntry]) -> None:
        for entry in entries:
            writer = self._current()
            request = writer.create_warc_record(
                entry.url,
                "request",
                payload=BytesIO(entry.request_body),
                length=len(entry.request_body),
                http_headers=_request_headers(entry),
                warc_headers_dict=self._warc_headers(entry),
            )
            response = writer.create_warc_record(
                entry.url,
                "response",
                payload=BytesIO(entry.body),
                length=len(entry.body),
                http_headers=_response_headers(entry),
                warc_headers_dict=self._warc_headers(entry),
            )
            writer.write_request_response_pair(request, response)
            assert self._file is not None
            if self._file.tell() >= self.max_size:
                self._finish()

    def close(self) -> None:
        if self._file is not None:
            self._finish()

    def _current(self) -> WARCWriter:
        if self._writer is None:
            self._serial += 1
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S%f")
            name = f"{self.prefix}-{stamp}-{self._serial:05d}-{self._host}-{os.getpid()}"
            self._path = os.path.join(self.directory, name + OPEN_SUFFIX)
            self._file = open(self._path, "xb")  # noqa: SIM115 - held until rotated
            # Held while written: a later run repairs only files nobody holds.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._writer = WARCWriter(self._file, gzip=True, warc_version="1.1")
            self._writer.write_record(self._writer.create_warcinfo_record(name + SUFFIX, self.info))
        return self._writer

    def _finish(self) -> None:
        assert self._file is not None
        self._file.close()
        final = self._path[: -len(".open")]
        os.replace(self._path, final)
        self.finished.append(final)
        self._file = self._writer = None

    @staticmethod
    def _warc_headers(entry: WarcEntry) -> dict[str, str]:
        headers = {"WARC-Date": entry.date}
        if entry.ip_address:
            headers["WARC-IP-Address"] = entry.ip_address
        return headers


def complete_length(path: str) -> int:
    """How many leading bytes of *path* are whole gzip members (whole records)."""
    complete = consumed = 0
    inflater = zlib.decompressobj(wbits=31)
    with open(path, "rb") as file:
        while block := file.read(_READ_BLOCK):
            while block:
                try:
                    inflater.decompress(block)
                except zlib.error:
                    return complete
                if not inflater.eof:
                    consumed += len(block)
                    break
                used = len(block) - len(inflater.unused_data)
                consumed += used
                complete = consumed
                block = inflater.unused_data
                inflater = zlib.decompressobj(wbits=31)
    return complete


def repair_abandoned(directory: str) -> list[str]:
    """Finish the ``.open`` files in *directory* that no live writer holds: cut a torn
    last record, rename to ``.warc.gz`` (or remove if nothing whole is left)."""
    repaired = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(OPEN_SUFFIX):
            continue
        path = os.path.join(directory, name)
        with open(path, "r+b") as file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer's
            file.truncate(complete_length(path))
            empty = file.seek(0, os.SEEK_END) == 0
        final = path[: -len(".open")]
        if empty:
            os.unlink(path)
        else:
            os.replace(path, final)
            repaired.append(final)
    return repaired


# --------------------------------------------------------------------------- the extension


class WarcWriter:
    """The Scrapy extension: every response the downloader produces, into WARC files.

    ``ASYNCFETCH_WARC_DIR`` (required) and ``ASYNCFETCH_WARC_MAX_SIZE`` (bytes a file grows
    to before the next one starts, default 1 GiB). Writing happens in one thread of its own,
    a batch of exchanges per hand-off; an OS error stops the crawl with finish reason
    ``asyncfetch_write_error`` and keeps every file written so far whole.
    """

    def __init__(self, crawler: Crawler, files: WarcFiles) -> None:
        self.crawler = crawler
        self.files = files
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="asyncfetch-warc")
        self._waiting: list[WarcEntry] = []
        self._drain: asyncio.Task[None] | None = None
        self._failed = False
        self.written = 0
        crawler.signals.connect(self._opened, signal=signals.spider_opened)
        crawler.signals.connect(self._downloaded, signal=signals.response_downloaded)
        crawler.signals.connect(self._closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self | RefusedComponent:
        settings = crawler.settings
        directory = settings.get("ASYNCFETCH_WARC_DIR")
        if not directory:
            raise NotConfigured("ASYNCFETCH_WARC_DIR is not set")
        try:
            max_size = get_int(settings, "ASYNCFETCH_WARC_MAX_SIZE", minimum=1)
        except SettingsError as exc:
            return RefusedComponent(crawler, exc)
        info = {
            "software": "scrapy-asyncfetch (Scrapy, aiohttp, warcio)",
            "format": "WARC File Format 1.1",
            "robots": "obey" if settings.getbool("ROBOTSTXT_OBEY") else "ignore",
            "http-header-user-agent": str(settings.get("USER_AGENT", "")),
        }
        prefix = str(getattr(crawler.spidercls, "name", None) or "crawl")
        return cls(crawler, WarcFiles(os.fspath(directory), prefix, max_size, info))

    async def _opened(self) -> None:
        try:
            repaired = await self._in_thread(self.files.open)
        except OSError as exc:
            self._fail(exc)
            return
        for path in repaired:
            logger.warning("Repaired %s, which an interrupted run left open", path)

    def _downloaded(self, response: Response, request: Request) -> None:
        if self._failed:
            return
        self._waiting.append(WarcEntry.from_exchange(request, response))
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._write_waiting())

    async def _write_waiting(self) -> None:
        try:
            while self._waiting and not self._failed:
                batch, self._waiting = self._waiting, []
                try:
                    await self._in_thread(self.files.write, batch)
                except OSError as exc:
                    self._fail(exc)
                    return
                self.written += len(batch)
                self.crawler.stats.inc_value("asyncfetch/warc/records", 2 * len(batch))
        finally:
            self._drain = None

    async def _closed(self) -> None:
        try:
            if self._drain is not None:
                await self._drain
            if not self._failed:
                await self._in_thread(self.files.close)
        except OSError as exc:
            self._fail(exc)
        finally:
            self._executor.shutdown(wait=False)
        if self.files.finished:
            logger.info(
                "WARC: %d exchanges in %d file(s) under %s",
                self.written,
                len(self.files.finished),
                self.files.directory,
            )

    def _fail(self, exc: OSError) -> None:
        if self._failed:
            return
        self._failed = True
        self.crawler.stats.inc_value("asyncfetch/warc/write_errors")
        logger.error(
            "Cannot write WARC files to %s (ASYNCFETCH_WARC_DIR): %s; closing the spider (%s)",
            self.files.directory,
            exc,
            WRITE_ERROR_REASON,
        )
        close_crawl_soon(self.crawler, WRITE_ERROR_REASON)

    async def _in_thread(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)


def warc_files(directory: str) -> Sequence[str]:
    """The finished WARC files of *directory*, in name order."""
    return sorted(
        os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(SUFFIX)
    )
