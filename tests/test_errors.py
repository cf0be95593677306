"""The error mapping on its own, with real exception instances."""

from __future__ import annotations

import socket
import ssl
from typing import cast

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    ResponseDataLossError,
    UnsupportedURLSchemeError,
)
from scrapy.settings.default_settings import RETRY_EXCEPTIONS
from scrapy.utils.misc import load_object

from scrapy_asyncfetch._errors import (
    SCRAPY_DOWNLOAD_ERRORS,
    UnexpectedFetchError,
    is_connection_failure,
    map_exception,
)

URL = "http://example.test/page"
KEY = ConnectionKey("example.test", 80, False, True, None, None, None)


def _connector_error(os_error: OSError) -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(KEY, os_error)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), DownloadTimeoutError),
        (aiohttp.ConnectionTimeoutError(), DownloadTimeoutError),
        (aiohttp.SocketTimeoutError(), DownloadTimeoutError),
        (aiohttp.InvalidURL("http://[bad"), UnsupportedURLSchemeError),
        (aiohttp.NonHttpUrlClientError("ftp://x"), UnsupportedURLSchemeError),
        (ValueError("bad port"), UnsupportedURLSchemeError),
        (
            aiohttp.ClientConnectorDNSError(KEY, OSError(socket.EAI_NONAME, "unknown")),
            CannotResolveHostError,
        ),
        (_connector_error(ConnectionRefusedError(111, "refused")), DownloadConnectionRefusedError),
        (ConnectionRefusedError(111, "refused"), DownloadConnectionRefusedError),
        (
            aiohttp.ClientConnectorSSLError(KEY, ssl.SSLError(1, "handshake failure")),
            DownloadFailedError,
        ),
        (ssl.SSLError(1, "wrong version number"), DownloadFailedError),
        (ssl.SSLCertVerificationError(1, "unknown CA"), DownloadFailedError),
        (aiohttp.ServerDisconnectedError(), DownloadFailedError),
        (aiohttp.ClientOSError(104, "reset"), DownloadFailedError),
        (ConnectionResetError(104, "reset"), DownloadFailedError),
        (aiohttp.ClientPayloadError("not complete"), ResponseDataLossError),
        (EOFError(), DownloadFailedError),
        (RuntimeError("a bug"), UnexpectedFetchError),
    ],
)
def test_mapping(exc: BaseException, expected: type[Exception]) -> None:
    mapped = map_exception(exc, URL, 3.0)
    assert type(mapped) is expected
    assert mapped.__cause__ is exc
    assert isinstance(mapped, SCRAPY_DOWNLOAD_ERRORS)


def test_timeout_message_names_url_and_timeout() -> None:
    assert str(map_exception(TimeoutError(), URL, 2.5)) == (
        f"Getting {URL} took longer than 2.5 seconds."
    )


def test_scrapy_exceptions_pass_unchanged() -> None:
    exc = DownloadTimeoutError("x")
    assert map_exception(exc, URL, 1) is exc


def test_retryable_failures_are_in_retry_exceptions() -> None:
    # What Scrapy retries by default must include every network-level class
    # we map to, so RetryMiddleware retries exactly what it retries today.
    retried = tuple(
        cast("type[BaseException]", load_object(p) if isinstance(p, str) else p)
        for p in RETRY_EXCEPTIONS
    )
    for cls in (
        DownloadTimeoutError,
        DownloadConnectionRefusedError,
        CannotResolveHostError,
        DownloadFailedError,
        ResponseDataLossError,
        UnexpectedFetchError,
    ):
        assert issubclass(cls, retried), cls
    assert not issubclass(UnsupportedURLSchemeError, retried)


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (_connector_error(ConnectionRefusedError(111, "refused")), True),
        (aiohttp.ClientConnectorDNSError(KEY, OSError(socket.EAI_NONAME, "unknown")), True),
        (aiohttp.ClientConnectorSSLError(KEY, ssl.SSLError(1, "handshake")), True),
        (aiohttp.ConnectionTimeoutError(), True),
        (TimeoutError(), False),
        (aiohttp.SocketTimeoutError(), False),
        (aiohttp.ServerDisconnectedError(), False),
        (aiohttp.ClientPayloadError("cut"), False),
    ],
)
def test_connection_failures_for_the_breaker(exc: BaseException, counts: bool) -> None:
    assert is_connection_failure(map_exception(exc, URL, 1.0)) is counts
