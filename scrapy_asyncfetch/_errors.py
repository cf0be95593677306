"""Map what aiohttp, asyncio, ssl and the OS raise to the exceptions Scrapy's own
download handlers raise, so RetryMiddleware retries exactly what it retries today
and errbacks receive a meaningful Failure.

Plain Python: no crawler, no event loop needed to use or test it.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    IgnoreRequest,
    ResponseDataLossError,
    UnsupportedURLSchemeError,
)

#: Every class :func:`map_exception` can return. Nothing else leaves the middleware.
SCRAPY_DOWNLOAD_ERRORS: tuple[type[Exception], ...] = (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    ResponseDataLossError,
    UnsupportedURLSchemeError,
)


class HostUnavailableError(IgnoreRequest):
    """The domain's circuit breaker is open: the request was not sent. Not
    retried (retrying would fail the same way); recorded as a failure."""


class CancelledAtCloseError(DownloadCancelledError):
    """The crawl closed before this request could be fetched. With JOBDIR the
    request is resumed by the next run; without, it is recorded as a failure."""


class UnexpectedFetchError(DownloadFailedError):
    """A failure no mapping rule knows: still a DownloadFailedError for Scrapy,
    but distinguishable so the middleware can log it loudly once."""


def is_connection_failure(exc: BaseException) -> bool:
    """Did ``exc`` (as mapped) fail to reach the host at all: name resolution,
    refused connection, connect timeout, TLS handshake? Other timeouts do not
    count: a slow page on a healthy host says nothing about the host."""
    cause = exc.__cause__
    return isinstance(
        cause,
        aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | ConnectionRefusedError,
    )


def map_exception(exc: BaseException, url: str, timeout: float) -> Exception:
    """Return the Scrapy exception for ``exc`` raised while fetching ``url``.

    Exceptions that already are Scrapy download errors are returned unchanged.
    The original exception is kept as ``__cause__`` for debugging.
    """
    if isinstance(exc, SCRAPY_DOWNLOAD_ERRORS):
        return exc
    mapped = _mapped(exc, url, timeout)
    mapped.__cause__ = exc
    return mapped


def _mapped(exc: BaseException, url: str, timeout: float) -> Exception:
    # Order matters: aiohttp's classes inherit from OSError, TimeoutError and each other.
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return DownloadTimeoutError(f"Getting {url} took longer than {timeout} seconds.")
    # Before ValueError: certificate verification errors are ValueErrors too.
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return DownloadFailedError(f"TLS error: {_describe(exc)}")
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError | ValueError):
        return UnsupportedURLSchemeError(f"Cannot fetch {url}: {_describe(exc)}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return CannotResolveHostError(_describe(exc))
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError):
        return DownloadConnectionRefusedError(_describe(exc))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ResponseDataLossError(_describe(exc))
    if isinstance(exc, aiohttp.ClientError | OSError | EOFError):
        return DownloadFailedError(_describe(exc))
    return UnexpectedFetchError(_describe(exc))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
