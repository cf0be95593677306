"""Issue 6, "nothing lost, nothing hangs, nothing leaks": faults.

Every fault the mock server can produce, and the client-side ones, against real
crawls: each must end as the right Scrapy outcome, be retried where Scrapy's
RetryMiddleware retries it, end within its timeout, never escape the middleware
unmapped, and be accounted for exactly once by the ledger (manifest or
``failures.jsonl``). Then the per-domain circuit breaker, measured by the
servers' own clocks (the politeness engine's crawls are in test_politeness_crawls.py).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import resource
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from scrapy import Request
from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    IgnoreRequest,
    NotSupported,
    ResponseDataLossError,
    UnsupportedURLSchemeError,
)
from scrapy.spidermiddlewares.httperror import HttpError

from scrapy_asyncfetch import HostUnavailableError, PageWriterPipeline
from scrapy_asyncfetch._breaker import FIRST_PROBE_DELAY
from scrapy_asyncfetch._errors import SCRAPY_DOWNLOAD_ERRORS
from tests.conftest import asyncio_test, crawl, serve
from tests.faultcrawl import (
    INVALID_INPUT,
    FaultSpider,
    assert_accounted_once,
    read_outcomes,
)
from tests.mockserver import MockServer

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 0.5
#: For the faults whose every attempt ends at its timeout.
SHORT_TIMEOUT = 0.3
RETRY_TIMES = 2
MiB = 1 << 20
#: Exceptions Scrapy's own components raise, which reach errbacks as in stock Scrapy.
SCRAPY_OWN_ERRORS = (
    NotSupported,  # the downloader: no handler for the scheme
    gzip.BadGzipFile,  # HttpCompressionMiddleware: a body that is not gzip
)
#: What the middleware may count under asyncfetch/exceptions/.
MAPPED_NAMES = {cls.__name__ for cls in SCRAPY_DOWNLOAD_ERRORS} | {"HostUnavailableError"}


@dataclass
class Env:
    server: MockServer
    closed_port: int


@dataclass(frozen=True)
class Fault:
    url: Callable[[Env], str]
    error: type[BaseException]
    status: int | None = None
    retried: bool = False
    #: Every attempt ends at its download timeout.
    timeout: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    dont_filter: bool = False

    @property
    def attempts(self) -> int:
        return RETRY_TIMES + 1 if self.retried else 1

    def request(self, env: Env) -> Request:
        return Request(self.url(env), meta=self.meta, dont_filter=self.dont_filter)


def _http(path: str, host: int = 1) -> Callable[[Env], str]:
    return lambda env: env.server.url(path, host=host)


def _fault(path: str) -> Callable[[Env], str]:
    return lambda env: env.server.fault_url(path)


def _status(code: int, host: int = 2) -> Fault:
    return Fault(
        _http(f"/status/{code}", host),
        HttpError,
        status=code,
        retried=code != 404,
    )


def _times_out(url: Callable[[Env], str]) -> Fault:
    return Fault(
        url,
        DownloadTimeoutError,
        retried=True,
        timeout=True,
        meta={"download_timeout": SHORT_TIMEOUT},
    )


def _retry_after_date(env: Env) -> str:
    # Built when the test runs: a second from now.
    date = quote(formatdate(time.time() + 1, usegmt=True))
    return env.server.url(f"/retry-after/503?after={date}", host=3)


FAULTS: dict[str, Fault] = {
    "reset-before-headers": Fault(
        _fault("/reset-before-headers"), DownloadFailedError, retried=True
    ),
    "reset-mid-body": Fault(_http("/reset-mid-body"), ResponseDataLossError, retried=True),
    "never-answer": _times_out(_fault("/never-answer")),
    "trickle-headers": _times_out(_fault("/trickle-headers")),
    "trickle-body": _times_out(_http("/drip?bytes=50&interval=0.1", 4)),
    "status-404": _status(404),
    "status-500": _status(500),
    "status-502": _status(502),
    "status-503": _status(503),
    "429-retry-after-seconds": Fault(
        _http("/retry-after/429?after=1", 3),
        HttpError,
        status=429,
        retried=True,
    ),
    "503-retry-after-http-date": Fault(
        _retry_after_date,
        HttpError,
        status=503,
        retried=True,
    ),
    "body-shorter-than-content-length": Fault(
        _fault("/short-body"), ResponseDataLossError, retried=True
    ),
    "connection-closed-mid-body": Fault(_http("/truncated"), ResponseDataLossError, retried=True),
    "invalid-gzip": Fault(_http("/bad-gzip"), gzip.BadGzipFile),
    "endless-body": Fault(
        _http("/endless", 4), DownloadCancelledError, meta={"download_maxsize": MiB}
    ),
    "huge-body": Fault(
        _http("/bytes/67108864", 4), DownloadCancelledError, meta={"download_maxsize": MiB}
    ),
    "huge-chunked-body": Fault(
        _http("/stream/67108864?chunk=65536", 4),
        DownloadCancelledError,
        meta={"download_maxsize": MiB},
    ),
    "gzip-bomb": Fault(
        _http("/gzip-bomb?size=2048", 5),
        IgnoreRequest,
        # The server takes a while to build a bomb the first time.
        meta={"download_maxsize": 32 * MiB, "download_timeout": 20},
    ),
    # Not filtered as a duplicate: followed until RedirectMiddleware gives up.
    "redirect-loop": Fault(
        _http("/redirect-loop", 5),
        IgnoreRequest,
        dont_filter=True,
    ),
    "malformed-status-line": Fault(_fault("/malformed-status"), DownloadFailedError, retried=True),
    "malformed-headers": Fault(_fault("/malformed-headers"), DownloadFailedError, retried=True),
    "not-http": Fault(_fault("/not-http"), DownloadFailedError, retried=True),
    "tls-handshake-failure": Fault(
        lambda env: env.server.tls_fail_url(), DownloadFailedError, retried=True
    ),
    # Client side.
    "connection-refused": Fault(
        lambda env: f"http://127.0.0.1:{env.closed_port}/",
        DownloadConnectionRefusedError,
        retried=True,
    ),
    "unresolvable-host": Fault(
        lambda env: f"http://nowhere.invalid:{env.server.http_port}/",
        CannotResolveHostError,
        retried=True,
    ),
    "unknown-test-host": Fault(
        lambda env: f"http://h300.test:{env.server.http_port}/echo",
        CannotResolveHostError,
        retried=True,
    ),
    "url-without-host": Fault(lambda env: "http:///no/host", UnsupportedURLSchemeError),
    "url-with-invalid-ipv4": Fault(lambda env: "http://256.0.0.1/", UnsupportedURLSchemeError),
    "unsupported-scheme": Fault(lambda env: "gopher://127.0.0.1/x", NotSupported),
    "unknown-scheme": Fault(lambda env: "httpx://127.0.0.1/x", NotSupported),
}

#: Path asked for -> what the server must receive: Scrapy's escaping, sent verbatim.
ODD_PATHS = {
    "/echo/a b c?q=x y": "/echo/a%20b%20c?q=x%20y",
    "/echo/ünï/€?q=ü": "/echo/%C3%BCn%C3%AF/%E2%82%AC?q=%C3%BC",
    "/echo/%41%zz%?x=%&y=%2": "/echo/%41%zz%?x=%&y=%2",
    "/echo/%E2%82%AC/<a>|{b}": "/echo/%E2%82%AC/%3Ca%3E%7C%7Bb%7D",
}
#: Inputs that cannot even become a Request.
INVALID_INPUTS = ["http://h2.test:99999/", "http://[::1/", "mailto:someone@h2.test", ""]


def fault_settings(pages_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        "ITEM_PIPELINES": {PageWriterPipeline: 300},
        "ASYNCFETCH_PAGES_DIR": str(pages_dir),
        "RETRY_ENABLED": True,
        "RETRY_TIMES": RETRY_TIMES,
        "DOWNLOAD_TIMEOUT": TIMEOUT,
        # A Retry-After holds the retry of its request: keep that short here.
        "ASYNCFETCH_BACKOFF_MAX": 0.2,
        # Repeated faults on one domain must not open its circuit breaker here.
        "ASYNCFETCH_BREAKER_THRESHOLD": 0,
        "ASYNCFETCH_SHUTDOWN_TIMEOUT": 0,
        "LOG_LEVEL": "INFO",
        **extra,
    }


async def run(
    pages_dir: Path,
    urls: Sequence[Request | str],
    *,
    spider_cls: type[FaultSpider] = FaultSpider,
    errbacks: bool = True,
    **settings: Any,
) -> tuple[Any, dict[str, Any]]:
    """Crawl ``urls``; check it finished with every request accounted for."""
    crawler = await crawl(
        spider_cls, fault_settings(pages_dir, **settings), urls=urls, errbacks=errbacks
    )
    return finished_cleanly(crawler, spider_cls)


def finished_cleanly(crawler: Any, spider_cls: type) -> tuple[Any, dict[str, Any]]:
    """The crawl's spider and stats, once checked: finished, every request
    accounted for, only mapped exceptions counted."""
    spider = crawler.spider
    assert isinstance(spider, spider_cls)
    assert crawler.stats is not None
    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    assert stats["asyncfetch/ledger/unaccounted"] == 0
    assert_mapped(stats)
    return spider, stats


def assert_mapped(stats: dict[str, Any]) -> None:
    """Only Scrapy download errors (and the breaker's) left the middleware."""
    raised = {key.rsplit("/", 1)[1] for key in stats if key.startswith("asyncfetch/exceptions/")}
    assert raised <= MAPPED_NAMES, raised - MAPPED_NAMES


def assert_no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        r.getMessage()
        for r in caplog.records
        if "Unexpected error" in r.getMessage()
        or "Unhandled" in r.getMessage()
        or "Unclosed" in r.getMessage()
    ]
    assert not bad, bad


def canonical(url: str) -> str:
    return Request(url).url


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("fault_id", list(FAULTS))
@asyncio_test
async def test_fault_outcome(
    fault_id: str,
    mockserver: MockServer,
    closed_port: int,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fault = FAULTS[fault_id]
    request = fault.request(Env(mockserver, closed_port))
    url = request.url
    spider, stats = await run(tmp_path, [request])

    outcome = spider.only(url)
    assert outcome.kind == "failure"
    assert outcome.cls is fault.error, outcome.message
    assert issubclass(
        outcome.cls, (*SCRAPY_DOWNLOAD_ERRORS, IgnoreRequest, HttpError, *SCRAPY_OWN_ERRORS)
    )
    assert outcome.status == fault.status
    if issubclass(fault.error, SCRAPY_DOWNLOAD_ERRORS):
        # Raised by the middleware itself, once per attempt, and counted.
        assert stats[f"asyncfetch/exceptions/{fault.error.__name__}"] == fault.attempts
    assert stats.get("retry/count") == (RETRY_TIMES if fault.retried else None)
    if fault.timeout:
        # Each attempt ended at its timeout: not earlier, not much later.
        assert fault.attempts * SHORT_TIMEOUT * 0.9 <= outcome.elapsed
        assert outcome.elapsed <= fault.attempts * SHORT_TIMEOUT + 1.0
    else:
        assert outcome.elapsed < 3.0
    assert_no_unexpected_errors(caplog)


@pytest.mark.parametrize("errbacks", [True, False], ids=["errback", "no-errback"])
@pytest.mark.parametrize("fault_id", FAULTS)
@asyncio_test
async def test_fault_is_recorded_once_with_its_reason(
    fault_id: str, errbacks: bool, mockserver: MockServer, closed_port: int, tmp_path: Path
) -> None:
    fault = FAULTS[fault_id]
    request = fault.request(Env(mockserver, closed_port))
    await run(tmp_path, [request], errbacks=errbacks)
    outcomes = assert_accounted_once(tmp_path, [request.url])
    (record,) = outcomes.failures
    assert record["reason"] == fault.error.__name__, record
    assert record["status"] == fault.status
    assert record["attempts"] == fault.attempts
    assert record["message"]


@asyncio_test
async def test_with_a_project_downloader_a_process_response_error_is_recorded_at_close(
    mockserver: MockServer, closed_port: int, tmp_path: Path
) -> None:
    # Only LedgerDownloader sees such errors; with the project's own DOWNLOADER
    # the ledger still accounts for the URL, without the exception's class.
    request = FAULTS["redirect-loop"].request(Env(mockserver, closed_port))
    await run(tmp_path, [request], DOWNLOADER="scrapy.core.downloader.Downloader")
    (record,) = assert_accounted_once(tmp_path, [request.url]).failures
    assert record["reason"] == "DownloadError"


@asyncio_test
async def test_every_input_is_accounted_exactly_once(
    mockserver: MockServer, closed_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = Env(mockserver, closed_port)
    faulty = {fault_id: fault.request(env) for fault_id, fault in FAULTS.items()}
    good = [mockserver.url(f"/page/{n}", host=n % 6 + 1) for n in range(30)]
    odd = [f"http://h2.test:{mockserver.http_port}{path}" for path in ODD_PATHS]
    requests: list[Request | str] = [*faulty.values(), *good, *odd, *INVALID_INPUTS]
    spider, stats = await run(tmp_path, requests, errbacks=False)

    inputs = [r.url for r in faulty.values()] + [canonical(u) for u in good + odd] + INVALID_INPUTS
    outcomes = assert_accounted_once(tmp_path, inputs)
    assert set(outcomes.pages) == {canonical(u) for u in good + odd}
    assert all(record["status"] == 200 for record in outcomes.pages.values())
    failed = outcomes.failed
    for fault_id, fault in FAULTS.items():
        assert failed[faulty[fault_id].url]["reason"] == fault.error.__name__, fault_id
    for url in INVALID_INPUTS:
        assert failed[url]["reason"] == INVALID_INPUT
        assert failed[url]["attempts"] == 0
    assert spider.rejected == INVALID_INPUTS
    assert stats["asyncfetch/ledger/rejected_inputs"] == len(INVALID_INPUTS)
    assert stats["asyncfetch/ledger/pages"] == len(good) + len(odd)
    assert stats["asyncfetch/ledger/failures"] == len(FAULTS) + len(INVALID_INPUTS)
    assert_no_unexpected_errors(caplog)


@asyncio_test
async def test_redirect_to_a_url_already_seen_is_recorded(
    mockserver: MockServer, tmp_path: Path
) -> None:
    # The dupefilter drops the redirect to the same URL: the spider never hears
    # of it again, the ledger must.
    url = mockserver.url("/redirect-loop", host=5)
    spider, _ = await run(tmp_path, [url])
    assert spider.outcomes == {}
    outcomes = assert_accounted_once(tmp_path, [url])
    (record,) = outcomes.failures
    assert record["reason"] == "IgnoreRequest"
    assert "duplicate" in record["message"]


@asyncio_test
async def test_odd_characters_are_escaped_once_and_stored(
    mockserver: MockServer, tmp_path: Path
) -> None:
    urls = {
        f"http://H2.TEST:{mockserver.http_port}{path}": sent for path, sent in ODD_PATHS.items()
    }
    spider, _ = await run(tmp_path, list(urls))
    outcomes = assert_accounted_once(tmp_path, [canonical(u) for u in urls])
    assert len(outcomes.pages) == len(urls)
    received = mockserver.stats()["hosts"][f"h2.test:{mockserver.http_port}"]["paths"]
    assert len(received) == len(urls)
    for url, sent in urls.items():
        assert spider.only(url).status == 200
        record = outcomes.pages[canonical(url)]
        assert record["status"] == 200
        body = (tmp_path / record["path"]).read_bytes()
        assert f'"url": "{sent}"'.encode() in body, (url, body[:300])


@asyncio_test
async def test_gzip_bomb_stops_at_maxsize_quickly_in_bounded_memory(
    mockserver: MockServer, tmp_path: Path
) -> None:
    inflated_mib = 4096
    url = mockserver.url(f"/gzip-bomb?size={inflated_mib}", host=5)
    # The server builds the bomb once: do it now, so the crawl's time is the client's.
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: ASYNC210
        compressed = len(response.read())
    assert compressed < 8 * MiB  # a small body...
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.monotonic()
    spider, stats = await run(tmp_path, [url], DOWNLOAD_MAXSIZE=64 * MiB)
    elapsed = time.monotonic() - started
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    outcome = spider.only(url)
    assert outcome.cls is IgnoreRequest
    assert "exceeded DOWNLOAD_MAXSIZE" in outcome.message
    assert stats.get("retry/count") is None
    assert "httpcompression/response_count" not in stats
    assert elapsed < 3.0
    # ...that would inflate to 4 GiB: the crawl's peak memory grew by far less.
    assert peak_after - peak_before < 400 * MiB, (peak_before, peak_after)
    assert outcome.elapsed < 2.0


# --------------------------------------------------------------------------- helpers


def host_starts(server: MockServer, host: int) -> list[float]:
    return sorted(server.host_stats(host)["starts"])


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(starts)]


@dataclass
class Site:
    """An in-process server whose every answer is the same, after ``delay``."""

    base: str
    starts: list[float]

    def url(self, path: str) -> str:
        return self.base + path


@asynccontextmanager
async def site(
    address: str,
    port: int = 0,
    *,
    status: int = 200,
    delay: float = 0.0,
    retry_after: str | None = None,
) -> AsyncIterator[Site]:
    starts: list[float] = []

    async def answer(request: web.Request) -> web.Response:
        starts.append(time.monotonic())
        await asyncio.sleep(delay)
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return web.Response(status=status, text="answer", headers=headers, content_type="text/html")

    async with serve(answer, address, port) as base:
        yield Site(base, starts)


class StepSpider(FaultSpider):
    """Goes through ``steps`` in order: a list of URLs is requested at once and
    waited for (outcomes), a number is a pause in seconds, a callable returning
    an awaitable is awaited (e.g. to start a server)."""

    def __init__(self, steps: list[Any] = (), **kwargs: Any) -> None:  # type: ignore[assignment]
        super().__init__(**kwargs)
        self.steps = list(steps)
        #: monotonic time at which each step began
        self.step_times: list[float] = []

    async def start(self) -> AsyncIterator[Request]:
        expected = 0
        for step in self.steps:
            self.step_times.append(time.monotonic())
            if isinstance(step, int | float):
                await asyncio.sleep(step)
            elif callable(step):
                await step()
            else:
                for url in step:
                    request = self.make_request(url)
                    if request is not None:
                        expected += 1
                        yield request
                await self.wait_outcomes(expected)


async def run_steps(pages_dir: Path, steps: list[Any], **settings: Any) -> tuple[Any, dict]:
    crawler = await crawl(StepSpider, fault_settings(pages_dir, **settings), steps=steps)
    return finished_cleanly(crawler, StepSpider)


# --------------------------------------------------------------------------- breaker


def reasons(pages_dir: Path) -> Counter[str]:
    return Counter(record["reason"] for record in read_outcomes(pages_dir).failures)


def outcome_classes(spider: FaultSpider) -> Counter[type[BaseException] | None]:
    return Counter(o.cls for outcomes in spider.outcomes.values() for o in outcomes)


def breaker_settings(**extra: Any) -> dict[str, Any]:
    return {
        "RETRY_ENABLED": False,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
        "DOWNLOAD_TIMEOUT": 0.3,
        "ASYNCFETCH_BREAKER_THRESHOLD": 3,
        "ASYNCFETCH_BREAKER_COOLDOWN": 30.0,
        # Fail fast while open (holding for a comeback is tested on its own).
        "ASYNCFETCH_BREAKER_HOLD": 0,
        **extra,
    }


#: Ways a host cannot be reached at all, with the error each gives.
UNREACHABLE: dict[str, tuple[Callable[[Env, int], str], type[Exception]]] = {
    "refused": (
        lambda env, n: f"http://h9.test:{env.closed_port}/?n={n}",
        DownloadConnectionRefusedError,
    ),
    "unresolvable": (
        lambda env, n: f"http://h300.test:{env.server.http_port}/?n={n}",
        CannotResolveHostError,
    ),
    "tls-handshake": (lambda env, n: env.server.tls_fail_url(f"/?n={n}"), DownloadFailedError),
}


@pytest.mark.parametrize("kind", list(UNREACHABLE))
@asyncio_test
async def test_breaker_opens_after_consecutive_connection_failures(
    kind: str, mockserver: MockServer, closed_port: int, tmp_path: Path
) -> None:
    env = Env(mockserver, closed_port)
    make_url, error = UNREACHABLE[kind]
    down = [make_url(env, n) for n in range(8)]
    healthy = [mockserver.url(f"/page/{n}", host=3) for n in range(5)]
    started = time.monotonic()
    spider, stats = await run(tmp_path, [*down, *healthy], **breaker_settings())
    elapsed = time.monotonic() - started

    # Three attempts, then the five requests that waited behind them fail fast.
    assert outcome_classes(spider) == {error: 3, HostUnavailableError: 5, None: 5}
    assert stats.get("asyncfetch/breaker/opened") == 1
    assert stats.get("asyncfetch/breaker/rejected") == 5
    outcomes = assert_accounted_once(tmp_path, [canonical(u) for u in down + healthy])
    assert set(outcomes.pages) == set(healthy)
    assert reasons(tmp_path) == {error.__name__: 3, "HostUnavailableError": 5}
    assert all(record["attempts"] == 1 and record["message"] for record in outcomes.failures)
    assert elapsed < 3.0


@asyncio_test
async def test_breaker_lets_one_probe_through_after_cooldown(
    closed_port: int, tmp_path: Path
) -> None:
    urls = (f"http://h9.test:{closed_port}/?n={n}" for n in itertools.count())
    # breaker_settings' long cooldown: the steps that expect the breaker open
    # have the first probe delay (1 s), then twice that, to happen in, however
    # slow the machine.
    steps = [
        [next(urls) for _ in range(4)],  # two refusals open it, two rejected
        [next(urls)],  # still open: rejected
        FIRST_PROBE_DELAY + 0.2,
        [next(urls)],  # the probe: refused, so the breaker opens again
        [next(urls), next(urls)],  # rejected until the next probe, 2 s later
    ]
    spider, stats = await run_steps(
        tmp_path,
        steps,
        **breaker_settings(ASYNCFETCH_BREAKER_THRESHOLD=2),
    )
    assert outcome_classes(spider) == {DownloadConnectionRefusedError: 3, HostUnavailableError: 5}
    probe = spider.outcomes[canonical(f"http://h9.test:{closed_port}/?n=5")]
    assert [o.cls for o in probe] == [DownloadConnectionRefusedError]
    assert reasons(tmp_path) == {"DownloadConnectionRefusedError": 3, "HostUnavailableError": 5}
    assert stats.get("asyncfetch/breaker/opened") == 2
    assert stats.get("asyncfetch/breaker/rejected") == 5


@asyncio_test
async def test_successful_probe_closes_the_breaker(closed_port: int, tmp_path: Path) -> None:
    base = f"http://h9.test:{closed_port}"
    async with AsyncExitStack() as stack:
        servers: list[Site] = []

        async def start_server() -> None:
            # The host comes back, on the port that refused connections.
            servers.append(await stack.enter_async_context(site("127.0.0.9", closed_port)))

        steps: list[Any] = [
            [f"{base}/first"],  # refused, retried: refused (opens), retried: rejected
            start_server,
            FIRST_PROBE_DELAY + 0.2,
            [f"{base}/probe"],  # the probe: answered, so the breaker closes
            [f"{base}/after/{n}" for n in range(4)],
        ]
        spider, stats = await run_steps(
            tmp_path,
            steps,
            **breaker_settings(
                RETRY_ENABLED=True,
                ASYNCFETCH_BREAKER_THRESHOLD=2,
            ),
        )
    assert spider.only(f"{base}/first").cls is HostUnavailableError
    # The rejection ends the request: RetryMiddleware does not retry it.
    assert stats["retry/count"] == 2
    assert not [key for key in stats if "retry/reason_count" in key and "HostUnavailable" in key]
    assert spider.only(f"{base}/probe").status == 200
    assert len(servers[0].starts) == 5
    outcomes = read_outcomes(tmp_path)
    assert len(outcomes.pages) == 5
    ((url, record),) = outcomes.failed.items()
    assert url == f"{base}/first"
    assert record["reason"] == "HostUnavailableError"
    assert record["attempts"] == 3
    assert stats.get("asyncfetch/breaker/opened") == 1
    assert stats.get("asyncfetch/breaker/rejected") == 1


@asyncio_test
async def test_any_response_resets_the_failure_count(
    mockserver: MockServer, closed_port: int, tmp_path: Path
) -> None:
    # One domain (h2.test), two ports: one refuses, one answers 404.
    numbers = itertools.count()

    def refused() -> list[str]:
        return [f"http://h2.test:{closed_port}/?n={next(numbers)}"]

    def answered() -> list[str]:
        return [f"http://h2.test:{mockserver.http_port}/status/404?n={next(numbers)}"]

    # Never three refusals in a row until the end.
    steps = [refused(), refused(), answered(), refused(), refused(), answered()]
    steps += [refused(), refused(), refused(), refused()]
    spider, stats = await run_steps(tmp_path, steps, **breaker_settings())
    assert outcome_classes(spider) == {
        DownloadConnectionRefusedError: 7,
        HttpError: 2,
        HostUnavailableError: 1,
    }
    last = spider.outcomes[canonical(f"http://h2.test:{closed_port}/?n=9")]
    assert [o.cls for o in last] == [HostUnavailableError]
    assert stats.get("asyncfetch/breaker/opened") == 1
    assert stats.get("asyncfetch/breaker/rejected") == 1


@pytest.mark.parametrize(
    ("path", "settings"),
    [
        ("http://h9.test:{closed_port}/?n={n}", {"ASYNCFETCH_BREAKER_THRESHOLD": 0}),
        # The host answered: data loss, HTTP errors, resets and slow answers say
        # nothing about whether it can be reached.
        ("http://h2.test:{http_port}/truncated?n={n}", {}),
        ("http://h2.test:{http_port}/status/500?n={n}", {}),
        ("http://127.0.0.1:{fault_port}/reset-before-headers?n={n}", {}),
        ("http://127.0.0.1:{fault_port}/never-answer?n={n}", {}),
    ],
    ids=["disabled", "data-loss", "http-error", "reset", "read-timeout"],
)
@asyncio_test
async def test_breaker_stays_closed(
    path: str,
    settings: dict[str, Any],
    mockserver: MockServer,
    closed_port: int,
    tmp_path: Path,
) -> None:
    ports = {
        "closed_port": closed_port,
        "http_port": mockserver.http_port,
        "fault_port": mockserver.fault_port,
    }
    urls = [path.format(n=n, **ports) for n in range(5)]
    spider, stats = await run(tmp_path, urls, **breaker_settings(**settings))
    classes = outcome_classes(spider)
    assert HostUnavailableError not in classes
    assert sum(classes.values()) == 5
    assert "asyncfetch/breaker/opened" not in stats
    assert "asyncfetch/breaker/rejected" not in stats


@asyncio_test
async def test_connect_timeouts_open_the_breaker(unaccepting_port: int, tmp_path: Path) -> None:
    urls = [f"http://127.0.0.1:{unaccepting_port}/?n={n}" for n in range(4)]
    spider, stats = await run(tmp_path, urls, **breaker_settings())
    assert outcome_classes(spider) == {DownloadTimeoutError: 3, HostUnavailableError: 1}
    assert stats.get("asyncfetch/breaker/opened") == 1


@asyncio_test
async def test_each_attempt_reaches_the_server_once(mockserver: MockServer, tmp_path: Path) -> None:
    url = mockserver.fault_url("/reset-before-headers")
    spider, stats = await run(tmp_path, [url])
    assert spider.only(url).cls is DownloadFailedError
    assert stats["retry/count"] == RETRY_TIMES
    assert mockserver.stats()["hosts"][f"127.0.0.1:{mockserver.fault_port}"]["count"] == (
        RETRY_TIMES + 1
    )


@asyncio_test
async def test_a_stale_keepalive_connection_is_resent_not_retried(
    mockserver: MockServer, tmp_path: Path
) -> None:
    # The second request goes out on the pooled connection, which the server
    # then closes unanswered: sent again at once on a fresh one, as Twisted does.
    first, second = (mockserver.fault_url(f"/keepalive-then-drop?n={n}") for n in (1, 2))
    spider, stats = await run_steps(tmp_path, [[first], [second]])
    assert spider.only(first).status == spider.only(second).status == 200
    assert "retry/count" not in stats
    # Two connections: one answered the first request and dropped the second,
    # the next answered the second again.
    assert mockserver.stats()["hosts"][f"127.0.0.1:{mockserver.fault_port}"]["count"] == 2
