"""Every requested URL ends written or recorded as failed, exactly once."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request

from scrapy_asyncfetch import Ledger
from scrapy_asyncfetch.storage import read_manifest
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer, page_body
from tests.spiders import Collector, PageSpider

PAGES = 1700


def url_mix(server: MockServer) -> tuple[list[str], dict[str, str]]:
    """2,000 distinct URLs over 3 hosts and what each should end as."""
    expected: dict[str, str] = {}
    for i in range(PAGES):
        expected[server.url(f"/page/{i}", host=1 + i % 3)] = "page"
    for i in range(100):
        expected[server.url(f"/status/404?i={i}", host=2)] = "HttpError"
    for i in range(60):
        expected[server.url(f"/status/500?i={i}", host=3)] = "HttpError"
    for i in range(40):
        expected[server.url(f"/status/503?i={i}")] = "HttpError"
    for i in range(50):
        expected[server.url(f"/reset-mid-body?i={i}")] = "ResponseDataLossError"
    for i in range(30):
        expected[server.url(f"/truncated?i={i}", host=2)] = "ResponseDataLossError"
    for i in range(20):
        expected[server.url(f"/delay/5?i={i}", host=3)] = "DownloadTimeoutError"
    assert len(expected) == 2000
    return list(expected), expected


def settings(pages_dir: Path) -> dict[str, Any]:
    return {
        "ASYNCFETCH_PAGES_DIR": str(pages_dir),
        "ITEM_PIPELINES": {"scrapy_asyncfetch.PageWriterPipeline": 300},
        "RETRY_ENABLED": True,
        "RETRY_TIMES": 1,
        "DOWNLOAD_TIMEOUT": 0.5,
        "CONCURRENT_REQUESTS": 64,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
        "LOG_LEVEL": "INFO",
        "ASYNCFETCH_BACKOFF_ENABLED": False,
    }


def list_pages(pages_dir: Path) -> list[Path]:
    # In the shard directories: the crawl report sits at the top.
    return list(pages_dir.glob("*/*.html"))


def read_failures(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_accounts(pages_dir: Path, expected: dict[str, str]) -> None:
    manifest = read_manifest(str(pages_dir / "manifest.jsonl"))
    failures = read_failures(pages_dir / "failures.jsonl")
    failed = Counter(f["url"] for f in failures)
    # Each URL exactly once across the two files, with the expected outcome.
    assert not set(manifest) & set(failed)
    assert failed
    assert max(failed.values()) == 1
    assert set(manifest) | set(failed) == set(expected)
    assert {u for u, kind in expected.items() if kind == "page"} == set(manifest)
    for failure in failures:
        assert failure["reason"] == expected[failure["url"]], failure
        assert failure["message"]
    for url, record in manifest.items():
        body = page_body(int(url.rsplit("/", 1)[1]))
        assert record["sha256"] == hashlib.sha256(body).hexdigest()
        stored = (pages_dir / record["path"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == record["sha256"]


@asyncio_test
async def test_every_url_is_accounted_for_exactly_once(
    mockserver: MockServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    urls, expected = url_mix(mockserver)
    # A few repeats that the dupefilter drops: not new requests.
    requests = [Request(u) for u in urls] + [Request(u) for u in urls[:25]]
    caplog.set_level(logging.INFO)
    crawler = await crawl(
        PageSpider, settings(tmp_path), requests=requests, errbacks=False, dont_filter=False
    )
    check_accounts(tmp_path, expected)
    stats = crawler.stats
    assert stats.get_value("asyncfetch/ledger/requests") == 2000
    assert stats.get_value("asyncfetch/ledger/pages") == PAGES
    assert stats.get_value("asyncfetch/ledger/failures") == 300
    assert stats.get_value("asyncfetch/ledger/duplicates") == 25
    assert stats.get_value("asyncfetch/ledger/unaccounted") == 0
    assert stats.get_value("asyncfetch/ledger/failures/HttpError") == 200
    assert stats.get_value("finish_reason") == "finished"
    (summary,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Ledger:")]
    assert (
        "2000 requests entered the scheduler, 1700 pages, 0 without a page, 300 failures" in summary
    )
    assert "0 unaccounted" in summary

    # A second run over the same URLs and directory: one file and one
    # effective manifest entry per URL, failures recorded again for the rerun.
    crawler = await crawl(PageSpider, settings(tmp_path), requests=urls, errbacks=False)
    manifest_lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(manifest_lines) == PAGES
    assert len(list_pages(tmp_path)) == PAGES
    assert crawler.stats.get_value("asyncfetch/ledger/unaccounted") == 0


@asyncio_test
async def test_offsite_and_callbacks_without_pages_are_recorded(
    mockserver: MockServer, tmp_path: Path
) -> None:
    class NoPageSpider(PageSpider):
        allowed_domains = ["127.0.0.1"]

        async def parse(self, response: Any) -> Any:
            if "page/1" in response.url:
                raise ValueError("callback bug")
            if "page/2" in response.url:
                return
            async for item in super().parse(response):
                yield item

    requests = [
        mockserver.url("/page/0"),
        mockserver.url("/page/1"),
        mockserver.url("/page/2"),
        mockserver.url("/page/3", host=2),  # offsite
    ]
    crawler = await crawl(
        NoPageSpider, settings(tmp_path), requests=requests, errbacks=False, dont_filter=False
    )
    reasons = {f["url"]: f["reason"] for f in read_failures(tmp_path / "failures.jsonl")}
    assert reasons == {
        requests[1]: "ValueError",
        requests[2]: "NoPage",
        requests[3]: "IgnoreRequest",
    }
    assert crawler.stats.get_value("asyncfetch/ledger/unaccounted") == 0
    assert crawler.stats.get_value("asyncfetch/ledger/pages") == 1


@asyncio_test
async def test_inputs_rejected_before_scheduling(mockserver: MockServer, tmp_path: Path) -> None:
    class Rejecting(PageSpider):
        async def start(self) -> Any:
            ledger = self.crawler.get_extension(Ledger)
            assert ledger is not None
            ledger.record_failure("not a url", "InvalidURL", "no scheme")
            async for request in super().start():
                yield request

    crawler = await crawl(Rejecting, settings(tmp_path), requests=[mockserver.url("/page/0")])
    failures = read_failures(tmp_path / "failures.jsonl")
    assert [(f["url"], f["reason"]) for f in failures] == [("not a url", "InvalidURL")]
    assert crawler.stats.get_value("asyncfetch/ledger/rejected_inputs") == 1
    assert crawler.stats.get_value("asyncfetch/ledger/unaccounted") == 0


@asyncio_test
async def test_unwritable_failures_file_is_one_clear_error(
    mockserver: MockServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    crawler = await crawl(
        PageSpider,
        {"ASYNCFETCH_FAILURES_FILE": str(blocker / "failures.jsonl"), "LOG_LEVEL": "INFO"},
        requests=[mockserver.url("/page/0")],
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "ASYNCFETCH_FAILURES_FILE" in errors[0].getMessage()
    assert errors[0].exc_info is None
    assert crawler.stats.get_value("finish_reason") == "asyncfetch_write_error"


@asyncio_test
async def test_spider_writing_no_pages_has_no_bogus_failures(
    mockserver: MockServer, tmp_path: Path
) -> None:
    """Without the page writer, a response processed without error is a
    success even if it yields no Page: the add-on must not flood the failures
    file of an ordinary spider."""
    requests = [mockserver.url(f"/page/{i}") for i in range(20)] + [mockserver.url("/status/404")]
    crawler = await crawl(
        Collector,
        {"ASYNCFETCH_FAILURES_FILE": str(tmp_path / "failures.jsonl")},
        requests=requests,
        errbacks=False,
    )
    stats = crawler.stats
    assert stats.get_value("asyncfetch/ledger/no_page") == 20
    assert stats.get_value("asyncfetch/ledger/failures") == 1
    assert stats.get_value("asyncfetch/ledger/unaccounted") == 0
    assert [f["reason"] for f in read_failures(tmp_path / "failures.jsonl")] == ["HttpError"]
