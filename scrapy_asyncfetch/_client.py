"""Fetch one Scrapy request with aiohttp and build the Scrapy response.

The aiohttp sessions (one per bind address, normally just one) are created
lazily inside the running event loop and closed by :meth:`Client.close`.
aiohttp is told not to follow redirects, decompress or keep cookies: Scrapy's
RedirectMiddleware, HttpCompressionMiddleware and CookiesMiddleware do that.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import time
import weakref
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp
import yarl
from OpenSSL import crypto
from scrapy import signals
from scrapy.exceptions import DownloadCancelledError, ResponseDataLossError, StopDownload
from scrapy.http import Headers, Response
from scrapy.responsetypes import responsetypes
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import load_object
from twisted.internet.ssl import Certificate
from twisted.web.iweb import UNKNOWN_LENGTH

from . import _compat
from ._config import bind_host
from ._errors import map_exception
from .warc import EXCHANGE_KEY, Exchange

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

    from ._config import FetchConfig
    from ._signals import SignalDispatch

#: The size and data-loss warnings are the built-in handler's: logged under its
#: logger, in its words, so filters and alerts set up for stock Scrapy see them.
_handler_logger = logging.getLogger("scrapy.core.downloader.handlers.http11")

# Scrapy's middlewares set exactly the headers a request should carry.
_SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")
# Twisted accepts header lines up to 16 KiB; aiohttp's 8 KiB default would
# refuse responses (large cookies) that stock Scrapy downloads.
_MAX_HEADER_LINE = 16 * 1024


class _DroppedUnanswered(aiohttp.ClientError):
    """A fresh connection closed before the response: raised in place of
    ``cause``, on which aiohttp would silently send the request again."""

    def __init__(self, cause: aiohttp.ClientError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _ClientResponse(aiohttp.ClientResponse):
    """Keeps the peer address and TLS object, which aiohttp drops once a small
    body has been read and the connection went back to the pool; and sends a
    request again only when a reused connection drops, as Twisted does."""

    peername: Any = None
    ssl_object: ssl.SSLObject | None = None
    # A drop on a connection that answered before is the server closing an idle
    # keep-alive connection: aiohttp resends once, rightly. On a fresh one it is
    # the server's answer to this request, for RetryMiddleware to count.
    _answered: ClassVar[weakref.WeakSet[object]] = weakref.WeakSet()

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        transport = connection.transport
        if transport is not None:
            self.peername = transport.get_extra_info("peername")
            self.ssl_object = transport.get_extra_info("ssl_object")
        protocol = connection.protocol
        try:
            response = await super().start(connection)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if protocol not in self._answered:
                raise _DroppedUnanswered(exc) from exc
            raise
        self._answered.add(protocol)
        return response


@lru_cache(maxsize=256)
def _class_from_headers(
    content_type: bytes | None, encoding: bytes | None, disposition: bytes | None
) -> type[Response]:
    headers = {
        name: value
        for name, value in (
            (b"Content-Type", content_type),
            (b"Content-Encoding", encoding),
            (b"Content-Disposition", disposition),
        )
        if value is not None
    }
    return responsetypes.from_headers(headers)


def response_class(headers: Headers, url: str, body: bytes) -> type[Response]:
    """``responsetypes.from_args``, with the usual case (headers decide) cached:
    the same few content types answer thousands of responses."""
    cls = _class_from_headers(
        headers.get(b"Content-Type"),
        headers.get(b"Content-Encoding"),
        headers.get(b"Content-Disposition"),
    )
    if cls is not Response:
        return cls
    return responsetypes.from_args(url=url, body=body)


# Parsing the same few peer addresses for every response adds up.
_ip_address = lru_cache(maxsize=1024)(ipaddress.ip_address)


@lru_cache(maxsize=64)
def _timeout(seconds: float, connect: float) -> aiohttp.ClientTimeout:
    # ``total`` covers connecting, sending, headers and the whole body. The
    # connect timeout is kept below it, so that a host that does not answer at
    # all fails as a connection timeout, which the circuit breaker counts.
    if seconds:
        connect = min(connect, 0.9 * seconds)
    return aiohttp.ClientTimeout(total=seconds or None, sock_connect=connect or None)


class Client:
    """Performs the HTTP(S) exchange for the middleware."""

    def __init__(self, crawler: Crawler, config: FetchConfig, dispatch: SignalDispatch) -> None:
        self._config = config
        self._dispatch = dispatch
        self._ssl_context = _compat.make_ssl_context(crawler.settings)
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}
        self._resolver_cls = load_object(config.resolver) if config.resolver else None
        self._dataloss_warned = False

    def _session(self, bind_address: str | None) -> aiohttp.ClientSession:
        session = self._sessions.get(bind_address)
        if session is None:
            connector = aiohttp.TCPConnector(
                # The middleware's limiter enforces the caps; a second,
                # differently-configured cap here would only confuse them.
                limit=0,
                limit_per_host=0,
                ssl=self._ssl_context,
                local_addr=(bind_address, 0) if bind_address else None,
                resolver=self._resolver_cls() if self._resolver_cls else None,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=_SKIP_AUTO_HEADERS,
                response_class=_ClientResponse,
                timeout=_timeout(0, 0),
                trust_env=False,
                max_line_size=_MAX_HEADER_LINE,
                max_field_size=_MAX_HEADER_LINE,
            )
            self._sessions[bind_address] = session
        return session

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def fetch(self, request: Request) -> tuple[Response, int]:
        """Return the response and the number of body bytes received.

        Raises only Scrapy's download exceptions (see :mod:`._errors`).
        """
        meta = request.meta
        timeout: float = meta.get("download_timeout", self._config.download_timeout)
        try:
            return await self._exchange(request, meta, timeout_s=timeout)
        except (StopDownload, DownloadCancelledError, ResponseDataLossError):
            raise
        except _DroppedUnanswered as exc:
            raise map_exception(exc.cause, request.url, timeout) from exc.cause
        except Exception as exc:
            raise map_exception(exc, request.url, timeout) from exc

    async def _exchange(
        self, request: Request, meta: dict[str, Any], *, timeout_s: float
    ) -> tuple[Response, int]:
        """Translate ``request`` for aiohttp, send it and read the answer."""
        proxy = meta.get("proxy")
        if proxy and "://" not in proxy:
            proxy = "http://" + proxy
        # Through a proxy, an https request is tunnelled: its credentials belong
        # to the CONNECT request only. A plain http request goes to the proxy
        # itself, which takes them from the request headers.
        tunnelled = bool(proxy) and urlparse_cached(request).scheme == "https"
        headers: list[tuple[str, str]] = []
        proxy_headers: dict[str, str] | None = None
        for name, values in request.headers.items():
            key = name.decode("latin-1")
            if key.lower() == "proxy-authorization" and (tunnelled or not proxy):
                if tunnelled:
                    proxy_headers = {key: values[-1].decode("latin-1")}
                continue
            headers.extend((key, value.decode("latin-1")) for value in values)
        session = self._session(bind_host(meta.get("bindaddress")) or self._config.bind_address)

        start = time.monotonic()
        async with session.request(
            request.method,
            # Scrapy URLs are already escaped: send them exactly as they are.
            yarl.URL(request.url, encoded=True),
            data=request.body or None,
            headers=headers,
            allow_redirects=False,
            proxy=proxy or None,
            proxy_headers=proxy_headers,
            timeout=_timeout(timeout_s, self._config.connect_timeout),
        ) as raw:
            meta["download_latency"] = time.monotonic() - start
            return await self._read(request, raw)  # type: ignore[arg-type]

    async def _read(self, request: Request, raw: _ClientResponse) -> tuple[Response, int]:
        meta = request.meta
        maxsize: int = meta.get("download_maxsize", self._config.maxsize)
        warnsize: int = meta.get("download_warnsize", self._config.warnsize)
        headers = Headers(raw.raw_headers)
        # aiohttp has undone the chunking, as Twisted does; like the built-in
        # handler, do not claim it in the response.
        headers.pop(b"Transfer-Encoding", None)
        expected = raw.content_length
        # In the built-in handler's order: the signal sees the headers first.
        stop = self._dispatch.send_stoppable(
            signals.headers_received,
            request,
            headers=headers,
            # Twisted's marker for "no Content-Length", which stock receivers get.
            body_length=UNKNOWN_LENGTH if expected is None else expected,
        )
        if stop is not None:
            return self._response(request, raw, headers, b"", stop=stop), 0
        if maxsize and expected is not None and expected > maxsize:
            raise self._too_big(expected, maxsize, request, "Expected to receive")
        warned = False
        if warnsize and expected is not None and expected > warnsize:
            warned = True
            _warn_size(expected, warnsize, request, "Expected to receive")

        chunks: list[bytes] = []
        received = 0
        wants_chunks = self._dispatch.listened(signals.bytes_received)
        try:
            async for chunk in raw.content.iter_any():
                chunks.append(chunk)
                received += len(chunk)
                if maxsize and received > maxsize:
                    chunks.clear()
                    raise self._too_big(received, maxsize, request, "Received")
                if warnsize and received > warnsize and not warned:
                    warned = True
                    _warn_size(received, warnsize, request, "Received")
                if wants_chunks and (
                    stop := self._dispatch.send_stoppable(
                        signals.bytes_received, request, data=chunk
                    )
                ):
                    return self._response(
                        request, raw, headers, b"".join(chunks), stop=stop
                    ), received
        except aiohttp.ClientPayloadError as exc:
            if meta.get("download_fail_on_dataloss", self._config.fail_on_dataloss):
                if not self._dataloss_warned:
                    self._dataloss_warned = True
                    _handler_logger.warning(
                        "Got data loss in %s. If you want to process broken responses set "
                        "the setting DOWNLOAD_FAIL_ON_DATALOSS = False -- This message "
                        "won't be shown in further requests",
                        request.url,
                    )
                raise ResponseDataLossError(f"{request.url}: {exc}") from exc
            return self._response(
                request, raw, headers, b"".join(chunks), flags=["dataloss"]
            ), received
        return self._response(request, raw, headers, b"".join(chunks)), received

    @staticmethod
    def _too_big(size: int, limit: int, request: Request, prefix: str) -> DownloadCancelledError:
        message = (
            f"{prefix} {size} bytes which is larger than download max size ({limit}) "
            f"in request {request}."
        )
        _handler_logger.warning(message)
        return DownloadCancelledError(message)

    def _response(
        self,
        request: Request,
        raw: _ClientResponse,
        headers: Headers,
        body: bytes,
        *,
        flags: list[str] | None = None,
        stop: StopDownload | None = None,
    ) -> Response:
        url = request.url
        cls = response_class(headers, url, body)
        version = raw.version
        response = cls(
            url=url,
            status=raw.status,
            headers=headers,
            body=body,
            flags=flags,
            request=request,
            certificate=_certificate(raw.ssl_object),
            ip_address=_ip_address(raw.peername[0]) if raw.peername else None,
            protocol=f"HTTP/{version.major}.{version.minor}" if version else None,
        )
        if self._config.keep_exchange:
            request.meta[EXCHANGE_KEY] = Exchange(
                reason=raw.reason or "",
                response_headers=raw.raw_headers,
                request_headers=tuple(raw.request_info.headers.items()),
            )
        if stop is not None:
            response.flags.append("download_stopped")
            if stop.fail:
                stop.response = response
                raise stop
        return response


def _certificate(ssl_object: ssl.SSLObject | None) -> Certificate | None:
    """The server certificate as Scrapy's built-in handler gives it (a Twisted
    ``Certificate``), so ``response.certificate.getSubject()`` keeps working."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return Certificate(crypto.load_certificate(crypto.FILETYPE_ASN1, der))


def _warn_size(size: int, limit: int, request: Request, prefix: str) -> None:
    _handler_logger.warning(
        "%s %d bytes which is larger than download warn size (%d) in request %s.",
        prefix,
        size,
        limit,
        request,
    )
