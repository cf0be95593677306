"""Request and response mapping, against the real loopback server."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request, signals
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    ResponseDataLossError,
    StopDownload,
)
from scrapy.http import HtmlResponse, JsonResponse, Response, TextResponse, XmlResponse
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.ssl import Certificate

from tests.conftest import asyncio_test, crawl
from tests.mockserver import COMPRESSED_TEXT, MockServer, body_bytes
from tests.spiders import Collector


async def fetch(
    *requests: Request | str, settings: dict[str, Any] | None = None, **kwargs: Any
) -> Collector:
    crawler = await crawl(Collector, settings, requests=requests, **kwargs)
    spider = crawler.spider
    assert isinstance(spider, Collector)
    spider.stats = crawler.stats.get_stats()
    return spider


def echo(response: Response) -> dict[str, Any]:
    return json.loads(response.body)


@asyncio_test
async def test_method_headers_and_body_round_trip(mockserver: MockServer) -> None:
    request = Request(
        mockserver.url("/echo?b=%7E&a=1"),
        method="PUT",
        body=b"\x00binary body\xff",
        headers={"X-Multi": ["one", "two"], "Content-Type": "application/x-test"},
    )
    spider = await fetch(request)
    (response,) = spider.responses
    sent = echo(response)
    assert sent["method"] == "PUT"
    assert sent["query_string"] == "b=%7E&a=1"
    assert base64.b64decode(sent["body_b64"]) == b"\x00binary body\xff"
    headers = [(k.lower(), v) for k, v in sent["headers"]]
    assert [v for k, v in headers if k == "x-multi"] == ["one", "two"]
    assert ("content-type", "application/x-test") in headers
    assert any(k == "user-agent" and v.startswith("Scrapy/") for k, v in headers)
    assert isinstance(response, JsonResponse)
    assert response.status == 200
    assert str(response.ip_address) == "127.0.0.1"
    assert response.protocol == "HTTP/1.1"
    assert response.meta["download_latency"] > 0
    assert response.meta["download_slot"] == "127.0.0.1"
    assert spider.stats["asyncfetch/requests"] == 1
    assert spider.stats["asyncfetch/responses"] == 1


@asyncio_test
async def test_url_is_sent_exactly_as_scrapy_escaped_it(mockserver: MockServer) -> None:
    url = mockserver.url("/echo/a%2Fb%3f/c?q=%2F&x=%20")
    spider = await fetch(Request(url, meta={"verbatim_url": True}))
    assert echo(spider.responses[0])["url"] == "/echo/a%2Fb%3f/c?q=%2F&x=%20"


@asyncio_test
async def test_redirects_follow_through_redirect_middleware(mockserver: MockServer) -> None:
    spider = await fetch(mockserver.url("/redirect/3"))
    (response,) = spider.responses
    assert response.url == mockserver.url("/redirect/0")
    assert response.body == b"done"
    assert len(response.meta["redirect_urls"]) == 3
    assert spider.stats["asyncfetch/responses"] == 4


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
@asyncio_test
async def test_decompression_by_httpcompression_middleware(
    mockserver: MockServer, encoding: str
) -> None:
    spider = await fetch(mockserver.url(f"/compressed/{encoding}"))
    (response,) = spider.responses
    assert response.body == COMPRESSED_TEXT
    # The middleware saw the encoded body: aiohttp did not decompress it.
    assert spider.stats["httpcompression/response_count"] == 1


@asyncio_test
async def test_cookies_by_cookies_middleware(mockserver: MockServer) -> None:
    class CookieSpider(Collector):
        async def parse(self, response: Response) -> Any:
            self.responses.append(response)
            if "setcookie" in response.url:
                yield Request(mockserver.url("/cookies"), callback=self.parse)

    crawler = await crawl(
        CookieSpider, requests=[mockserver.url("/setcookie?name=flavour&value=oat")]
    )
    spider = crawler.spider
    assert isinstance(spider, CookieSpider)
    assert spider.responses[-1].body == b"flavour=oat"


@asyncio_test
async def test_multi_valued_response_headers(mockserver: MockServer) -> None:
    spider = await fetch(mockserver.url("/headers-multi"))
    headers = spider.responses[0].headers
    assert len(headers.getlist("Set-Cookie")) == 2
    assert headers.getlist("X-Multi") == [b"a", b"b"]


@asyncio_test
async def test_response_classes(mockserver: MockServer) -> None:
    spider = await fetch(*(mockserver.url(p) for p in ("/html", "/json", "/xml", "/octet")))
    by_path = {r.url.rsplit("/", 1)[1]: type(r) for r in spider.responses}
    assert by_path == {
        "html": HtmlResponse,
        "json": JsonResponse,
        "xml": XmlResponse,
        "octet": Response,
    }


@asyncio_test
async def test_https_with_certificate(mockserver: MockServer) -> None:
    spider = await fetch(mockserver.url("/echo", https=True))
    (response,) = spider.responses
    assert isinstance(response, TextResponse)
    assert isinstance(response.certificate, Certificate)
    assert response.certificate.dumpPEM().startswith(b"-----BEGIN CERTIFICATE")
    assert str(response.ip_address) == "127.0.0.1"


@asyncio_test
async def test_https_verification_failure_is_a_download_failure(mockserver: MockServer) -> None:
    spider = await fetch(
        mockserver.url("/echo", https=True), settings={"DOWNLOAD_VERIFY_CERTIFICATES": True}
    )
    assert spider.failure_types() == [DownloadFailedError]
    assert "TLS" in str(spider.failures[0].value)


@asyncio_test
async def test_tls_handshake_failure(mockserver: MockServer) -> None:
    spider = await fetch(mockserver.tls_fail_url())
    assert spider.failure_types() == [DownloadFailedError]


@asyncio_test
async def test_http_proxy_with_credentials(mockserver: MockServer) -> None:
    proxy = mockserver.proxy_url(auth=("user", "pass"))
    spider = await fetch(
        Request(mockserver.url("/echo"), meta={"proxy": proxy}),
        Request(mockserver.url("/echo", https=True), meta={"proxy": proxy}),
    )
    assert len(spider.responses) == 2, spider.failures
    by_scheme = {r.url.split(":")[0]: echo(r) for r in spider.responses}
    plain = {k.lower(): v for k, v in by_scheme["http"]["headers"]}
    assert plain["via"] == "mockproxy"
    # Credentials go to the proxy, never to the site.
    assert "proxy-authorization" not in plain
    tunnelled = {k.lower() for k, _ in by_scheme["https"]["headers"]}
    assert "proxy-authorization" not in tunnelled
    log = mockserver.stats()["proxy"]
    assert sorted(entry["method"] for entry in log) == ["CONNECT", "GET"]
    assert all(entry["authorized"] for entry in log)


@asyncio_test
async def test_proxy_refusing_credentials(mockserver: MockServer) -> None:
    proxy = mockserver.proxy_url(auth=("user", "wrong"))
    spider = await fetch(Request(mockserver.url("/echo"), meta={"proxy": proxy}))
    assert spider.failure_types() == [HttpError]
    error = spider.failures[0].value
    assert isinstance(error, HttpError)
    assert error.response.status == 407


@asyncio_test
async def test_connect_timeout(unaccepting_port: int) -> None:
    spider = await fetch(
        Request(f"http://127.0.0.1:{unaccepting_port}/", meta={"download_timeout": 0.5})
    )
    assert spider.failure_types() == [DownloadTimeoutError]
    assert "0.5 seconds" in str(spider.failures[0].value)


@pytest.mark.parametrize("path", ["/delay/5", "/drip?bytes=20&interval=0.2"])
@asyncio_test
async def test_timeout_while_waiting_for_headers_or_body(mockserver: MockServer, path: str) -> None:
    spider = await fetch(
        Request(mockserver.url(path), meta={"download_timeout": 0.6}),
        settings={"ASYNCFETCH_SHUTDOWN_TIMEOUT": 0},
    )
    assert spider.failure_types() == [DownloadTimeoutError]
    assert spider.stats["elapsed_time_seconds"] < 3


@asyncio_test
async def test_download_timeout_setting_is_the_default(mockserver: MockServer) -> None:
    spider = await fetch(mockserver.url("/delay/5"), settings={"DOWNLOAD_TIMEOUT": 0.5})
    assert spider.failure_types() == [DownloadTimeoutError]


@asyncio_test
async def test_maxsize_from_content_length(mockserver: MockServer) -> None:
    spider = await fetch(
        Request(mockserver.url("/bytes/100000"), meta={"download_maxsize": 1000}),
    )
    assert spider.failure_types() == [DownloadCancelledError]
    assert "Expected to receive 100000 bytes" in str(spider.failures[0].value)


@asyncio_test
async def test_maxsize_while_streaming(mockserver: MockServer) -> None:
    spider = await fetch(
        mockserver.url("/stream/100000?chunk=1000"),
        mockserver.url("/endless"),
        settings={"DOWNLOAD_MAXSIZE": 50_000},
    )
    assert spider.failure_types() == [DownloadCancelledError, DownloadCancelledError]
    # Cut as soon as the limit was passed: never the whole (endless) body.
    assert spider.stats["elapsed_time_seconds"] < 5


@asyncio_test
async def test_sizes_headers_and_their_signals_match_stock(
    mockserver: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Chunked and sized bodies, one over the warn size, one over the max size
    # from its Content-Length: the same warnings (logger, level, words), the
    # same headers_received signals (sent before a max-size cancel too), the
    # same response headers (no Transfer-Encoding), the same byte counts.
    requests = [
        Request(mockserver.url("/stream/5000?chunk=500")),
        Request(mockserver.url("/bytes/3000")),
        Request(mockserver.url("/bytes/4000"), meta={"download_warnsize": 1000}),
        Request(mockserver.url("/bytes/100000"), meta={"download_maxsize": 1000}),
    ]
    seen: dict[str, list[Any]] = {}

    class Watcher(Collector):
        @classmethod
        def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> Watcher:
            spider = super().from_crawler(crawler, *args, **kwargs)
            crawler.signals.connect(spider.on_headers, signal=signals.headers_received)
            return spider

        def on_headers(self, request: Request, body_length: int, **_: Any) -> None:
            self.seen_headers.append((request.url, body_length))

        seen_headers: list[tuple[str, int]]

    for fetcher in ("stock", "asyncfetch"):
        caplog.clear()
        Watcher.seen_headers = []
        crawler = await crawl(
            Watcher, {"ASYNCFETCH_ENABLED": fetcher == "asyncfetch"}, requests=requests
        )
        spider = crawler.spider
        assert isinstance(spider, Watcher)
        seen[fetcher] = [
            sorted(
                (r.name, r.levelno, r.getMessage())
                for r in caplog.records
                if "size" in r.getMessage() and r.levelno >= logging.WARNING
            ),
            sorted(spider.seen_headers),
            sorted((r.url, sorted(r.headers)) for r in spider.responses),
            crawler.stats.get_value("downloader/response_bytes"),
            spider.failure_types(),
        ]
    assert seen["asyncfetch"] == seen["stock"]
    assert not any(b"Transfer-Encoding" in h for _, h in seen["stock"][2])
    assert seen["stock"][-1] == [DownloadCancelledError]


@asyncio_test
async def test_warnsize_warns_and_keeps_the_response(
    mockserver: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    spider = await fetch(
        Request(mockserver.url("/stream/5000?chunk=500"), meta={"download_warnsize": 1000})
    )
    assert spider.responses[0].body == body_bytes(5000)
    warnings = [r for r in caplog.records if "warn size" in r.getMessage()]
    assert len(warnings) == 1


@asyncio_test
async def test_connection_refused(closed_port: int) -> None:
    spider = await fetch(f"http://127.0.0.1:{closed_port}/")
    assert spider.failure_types() == [DownloadConnectionRefusedError]


@asyncio_test
async def test_unresolvable_host(mockserver: MockServer) -> None:
    spider = await fetch(
        f"http://nowhere.invalid:{mockserver.http_port}/echo",
        f"http://h2.test:{mockserver.http_port}/echo",
    )
    assert spider.failure_types() == [CannotResolveHostError]
    (response,) = spider.responses
    assert str(response.ip_address) == "127.0.0.2"
    assert response.meta["download_slot"] == "h2.test"


@pytest.mark.parametrize("path", ["/reset-mid-body", "/truncated"])
@asyncio_test
async def test_broken_bodies_are_data_loss(mockserver: MockServer, path: str) -> None:
    spider = await fetch(mockserver.url(path))
    assert spider.failure_types() == [ResponseDataLossError]


@asyncio_test
async def test_data_loss_allowed_gives_flagged_partial_response(mockserver: MockServer) -> None:
    spider = await fetch(
        mockserver.url("/truncated"), settings={"DOWNLOAD_FAIL_ON_DATALOSS": False}
    )
    (response,) = spider.responses
    assert response.flags == ["dataloss"]
    assert len(response.body) == 10


@asyncio_test
async def test_reset_before_headers_is_retried(mockserver: MockServer) -> None:
    spider = await fetch(
        mockserver.fault_url("/reset-before-headers"),
        settings={"RETRY_ENABLED": True, "RETRY_TIMES": 2},
    )
    assert spider.failure_types() == [DownloadFailedError]
    assert spider.stats["retry/count"] == 2
    assert spider.stats["asyncfetch/exceptions/DownloadFailedError"] == 3


@asyncio_test
async def test_failures_are_logged_once_without_traceback(
    closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # No errback: Scrapy logs the failure itself.
    await crawl(Collector, requests=[f"http://127.0.0.1:{closed_port}/"], errbacks=False)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is None
    assert "DownloadConnectionRefusedError" in errors[0].getMessage()


@pytest.mark.parametrize("retry", [True, False])
@asyncio_test
async def test_failure_log_levels_and_counts_match_stock(
    retry: bool, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Monitoring counts ERROR lines (log_count/ERROR, Spidermon): the same
    # records at the same levels as with Scrapy's own handlers, only shorter.
    url = f"http://127.0.0.1:{closed_port}/"
    settings = {"RETRY_ENABLED": retry, "RETRY_TIMES": 1}
    logged = {}
    for fetcher in ("stock", "asyncfetch"):
        caplog.clear()
        crawler = await crawl(
            Collector,
            {**settings, "ASYNCFETCH_ENABLED": fetcher == "asyncfetch"},
            requests=[url],
            errbacks=False,
        )
        records = [r for r in caplog.records if r.levelno >= logging.ERROR]
        logged[fetcher] = (
            [(r.name, r.levelno) for r in records],
            crawler.stats.get_value("log_count/ERROR"),
        )
        if fetcher == "asyncfetch":
            assert all(r.exc_info is None for r in records)
    assert logged["asyncfetch"] == logged["stock"]
    assert logged["stock"][1] == (2 if retry else 1)


@asyncio_test
async def test_other_schemes_pass_through(tmp_path: Path, mockserver: MockServer) -> None:
    page = tmp_path / "page.html"
    page.write_bytes(b"<html>local</html>")
    spider = await fetch(
        page.as_uri(),
        "data:text/plain,hello",
        Request(mockserver.url("/echo"), meta={"asyncfetch": False}),
    )
    bodies = sorted(r.body[:10] for r in spider.responses)
    assert bodies == [b"<html>loca", b"hello", b'{"method":']
    assert "asyncfetch/requests" not in spider.stats


@asyncio_test
async def test_downloader_signals_are_sent_as_scrapy_sends_them(
    mockserver: MockServer, closed_port: int
) -> None:
    # request_reached_downloader when a request enters its slot,
    # response_downloaded for an answer, request_left_downloader when it
    # leaves, whatever the outcome; never for requests Scrapy's handlers fetch.
    seen: list[tuple[str, str]] = []

    def recorder(name: str) -> Any:
        def record(request: Request, **_: Any) -> None:
            seen.append((name, request.url))

        return record

    names = ["request_reached_downloader", "response_downloaded", "request_left_downloader"]
    receivers = [recorder(name) for name in names]  # strong references: dispatch is weak

    class Tracer(Collector):
        @classmethod
        def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> Tracer:
            spider = super().from_crawler(crawler, *args, **kwargs)
            for name, receiver in zip(names, receivers, strict=True):
                crawler.signals.connect(receiver, signal=getattr(signals, name))
            return spider

    ok, refused = mockserver.url("/status/200"), f"http://127.0.0.1:{closed_port}/"
    await crawl(Tracer, {"RETRY_ENABLED": False}, requests=[ok, refused])
    for url, expected in ((ok, names), (refused, [names[0], names[2]])):
        assert [name for name, u in seen if u == url] == expected, seen


@asyncio_test
async def test_stop_download_from_signals(
    mockserver: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    def on_headers(request: Request, **_: Any) -> None:
        if "bytes" in request.url:
            raise StopDownload(fail=False)

    def on_bytes(request: Request, **_: Any) -> None:
        if "stream" in request.url:
            raise StopDownload(fail=True)

    class Stopper(Collector):
        @classmethod
        def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> Stopper:
            spider = super().from_crawler(crawler, *args, **kwargs)
            crawler.signals.connect(on_headers, signal=signals.headers_received)
            crawler.signals.connect(on_bytes, signal=signals.bytes_received)
            return spider

    crawler = await crawl(
        Stopper,
        requests=[mockserver.url("/bytes/100000"), mockserver.url("/stream/100000?chunk=1000")],
    )
    spider = crawler.spider
    assert isinstance(spider, Stopper)
    (stopped,) = spider.responses
    assert "download_stopped" in stopped.flags
    assert stopped.body == b""
    (failure,) = spider.failures
    assert isinstance(failure.value, StopDownload)
    assert failure.value.response is not None
    assert 0 < len(failure.value.response.body) < 100000
    # Logged at DEBUG in the built-in handlers' words.
    stops = [r for r in caplog.records if r.getMessage().startswith("Download stopped for")]
    assert [(r.levelno, r.getMessage().rsplit(" ", 1)[-1]) for r in stops] == [
        (logging.DEBUG, on_headers.__qualname__),
        (logging.DEBUG, on_bytes.__qualname__),
    ]


@pytest.mark.parametrize("where", ["meta", "setting"])
@asyncio_test
async def test_bind_address(mockserver: MockServer, where: str) -> None:
    if where == "meta":
        spider = await fetch(
            Request(mockserver.url("/echo"), meta={"bindaddress": ("127.0.0.7", 0)}),
            Request(mockserver.url("/echo")),
        )
        remotes = sorted(echo(r)["remote"] for r in spider.responses)
        assert remotes == ["127.0.0.1", "127.0.0.7"]
    else:
        spider = await fetch(
            mockserver.url("/echo"), settings={"DOWNLOAD_BIND_ADDRESS": "127.0.0.9"}
        )
        assert echo(spider.responses[0])["remote"] == "127.0.0.9"
