"""PageWriterPipeline and Page: real crawls against a local aiohttp server, real files."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from itemadapter import ItemAdapter
from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import DontCloseSpider, NotConfigured
from scrapy.http import HtmlResponse, Response
from scrapy.utils.test import get_crawler

from scrapy_asyncfetch._config import RefusedComponent
from scrapy_asyncfetch.page import Page
from scrapy_asyncfetch.pipelines import WRITE_ERROR_REASON, PageWriterPipeline
from scrapy_asyncfetch.storage import MANIFEST_NAME, page_relpath, read_manifest
from tests.conftest import asyncio_test, crawl, serve

PAGE_COUNT = 300
PIPELINE = {PageWriterPipeline: 300}


def served_body(n: int) -> bytes:
    """The body of /page/{n}: distinct per page, binary for odd pages."""
    if n % 2:
        return hashlib.sha256(str(n).encode()).digest() * (n % 40 + 1)
    return f"<html><body><h1>page {n}</h1>{'x' * n}</body></html>".encode()


def served_type(n: int) -> str:
    return "application/octet-stream" if n % 2 else "text/html; charset=utf-8"


async def page_view(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    return web.Response(body=served_body(n), headers={"Content-Type": served_type(n)})


async def redirect_view(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"/page/{request.match_info['n']}")


@asynccontextmanager
async def server() -> AsyncIterator[str]:
    """Serve /page/{n} and /redirect/{n} on 127.0.0.1; yield the base URL."""
    app = web.Application()
    app.router.add_get(r"/page/{n:\d+}", page_view)
    app.router.add_get(r"/redirect/{n:\d+}", redirect_view)
    async with serve(app) as base:
        yield base


class PagesSpider(Spider):
    """Fetches the given URLs and yields a Page for each, plus one plain dict item."""

    name = "pages"

    def __init__(self, urls: list[str], late_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.urls = urls
        # Requested only once the first URLs are all written, so a failure on it
        # happens after them, deterministically.
        self.late_url = late_url

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> PagesSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.idle, signal=signals.spider_idle)
        return spider

    async def start(self) -> AsyncIterator[Any]:
        yield {"kind": "not a page"}
        for url in self.urls:
            yield Request(url)

    def parse(self, response: Response) -> Any:
        yield Page.from_response(response)

    def idle(self) -> None:
        if self.late_url is not None:
            self.crawler.engine.crawl(Request(self.late_url))
            self.late_url = None
            raise DontCloseSpider


def settings(pages_dir: Path, **extra: Any) -> dict[str, Any]:
    return {
        # The pipeline alone, on Scrapy's own downloader: these tests check what it
        # guarantees, whatever the fetching middleware and the ledger do.
        "ADDONS": {},
        "ITEM_PIPELINES": PIPELINE,
        "ASYNCFETCH_PAGES_DIR": str(pages_dir),
        "CONCURRENT_REQUESTS": 32,
        "LOG_LEVEL": "INFO",
        **extra,
    }


def page_urls(base: str, count: int = PAGE_COUNT) -> dict[str, int]:
    return {f"{base}/page/{n}": n for n in range(count)}


def read_stored(pages_dir: Path, record: dict[str, Any]) -> bytes:
    data = (pages_dir / record["path"]).read_bytes()
    return gzip.decompress(data) if record["path"].endswith(".gz") else data


def assert_pages_match_server(pages_dir: Path, expected: dict[str, int]) -> dict[str, Any]:
    """Each URL has one manifest line and one file, holding exactly what /page/{n} served."""
    records = read_manifest(str(pages_dir / MANIFEST_NAME))
    assert set(records) == set(expected)
    assert len((pages_dir / MANIFEST_NAME).read_bytes().splitlines()) == len(expected)
    # Pages live one shard level down; other files (the ledger's) may sit at the top.
    assert len(list(pages_dir.glob("*/*"))) == len(expected)
    for url, n in expected.items():
        record = dict(records[url])
        digest = hashlib.sha256(served_body(n)).hexdigest()
        assert record["sha256"] == digest
        assert hashlib.sha256(read_stored(pages_dir, record)).hexdigest() == digest
        assert record["size"] == len(served_body(n))
        assert record["status"] == 200
        assert record["content_type"] == served_type(n)
    return dict(records)


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- Page


def test_page_from_response_after_redirect() -> None:
    request = Request(
        "http://example.com/final",
        meta={
            "redirect_urls": ["http://example.com/start", "http://example.com/middle"],
            "depth": 2,
            "download_latency": 0.25,
            "download_slot": "example.com",
            "retry_times": 1,
            "cookiejar": "not kept",
        },
    )
    response = HtmlResponse(
        "http://example.com/final",
        status=200,
        headers=[
            ("Content-Type", "text/html; charset=utf-8"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
        body=b"<html>\xe9</html>",
        request=request,
    )
    page = Page.from_response(response)
    assert page.url == "http://example.com/start"
    assert page.final_url == "http://example.com/final"
    assert page.status == 200
    assert page.headers["Set-Cookie"] == ["a=1", "b=2"]
    assert page.content_type == "text/html; charset=utf-8"
    assert page.body == b"<html>\xe9</html>"
    assert page.meta == {
        "depth": 2,
        "download_latency": 0.25,
        "download_slot": "example.com",
        "redirect_urls": ["http://example.com/start", "http://example.com/middle"],
        "retry_times": 1,
    }
    assert page.fetched_at.endswith("+00:00")
    assert "\\xe9" not in repr(page)  # the body stays out of logs


def test_page_without_request_or_content_type() -> None:
    page = Page.from_response(Response("http://example.com/", body=b"x"))
    assert page.url == page.final_url == "http://example.com/"
    assert page.meta == {}
    assert page.content_type == ""


def test_page_is_an_exportable_item() -> None:
    page = Page("http://a/", "http://a/", 200, {"X": ["1", "2"]}, b"\x00\xff")
    adapter = ItemAdapter(page)
    assert set(adapter.field_names()) == {
        "url",
        "final_url",
        "status",
        "headers",
        "body",
        "fetched_at",
        "meta",
    }
    assert adapter.get_field_meta("body")["serializer"](page.body) == "AP8="


# --------------------------------------------------------------------------- settings


def test_pages_dir_is_required() -> None:
    with pytest.raises(NotConfigured, match="ASYNCFETCH_PAGES_DIR is not set"):
        PageWriterPipeline.from_crawler(get_crawler(settings_dict={}))


def test_defaults(tmp_path: Path) -> None:
    crawler = get_crawler(settings_dict={"ASYNCFETCH_PAGES_DIR": str(tmp_path)})
    pipeline = PageWriterPipeline.from_crawler(crawler)
    assert isinstance(pipeline, PageWriterPipeline)
    assert pipeline.store.root == str(tmp_path)
    assert pipeline.store.gzipped is False


@pytest.mark.parametrize("value", [0, -3, "0"])
def test_write_concurrency_below_one_is_rejected(
    tmp_path: Path, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    crawler = get_crawler(
        settings_dict={"ASYNCFETCH_PAGES_DIR": str(tmp_path), "ASYNCFETCH_WRITE_CONCURRENCY": value}
    )
    assert isinstance(PageWriterPipeline.from_crawler(crawler), RefusedComponent)
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "ASYNCFETCH_WRITE_CONCURRENCY must be >= 1" in error


# --------------------------------------------------------------------------- crawls


@asyncio_test
async def test_crawl_writes_every_page(tmp_path: Path) -> None:
    pages_dir, feed = tmp_path / "pages", tmp_path / "feed.jsonl"
    async with server() as base:
        expected = page_urls(base)
        # Redirected pages are stored under the URL first requested.
        expected |= {f"{base}/redirect/{n}": n for n in range(PAGE_COUNT, PAGE_COUNT + 3)}
        config = settings(pages_dir, FEEDS={str(feed): {"format": "jsonlines"}})
        crawler = await crawl(PagesSpider, config, urls=list(expected))

    stats = crawler.stats
    assert stats is not None
    assert stats.get_value("finish_reason") == "finished"
    assert stats.get_value("log_count/ERROR") is None
    assert stats.get_value("asyncfetch/pages_written") == len(expected)
    assert stats.get_value("asyncfetch/page_bytes_written") == sum(
        len(served_body(n)) for n in expected.values()
    )
    assert stats.get_value("asyncfetch/page_write_errors") is None
    records = assert_pages_match_server(pages_dir, expected)
    for n in range(PAGE_COUNT, PAGE_COUNT + 3):
        assert records[f"{base}/redirect/{n}"]["final_url"] == f"{base}/page/{n}"

    exported = [json.loads(line) for line in feed.read_text().splitlines()]
    assert {"kind": "not a page"} in exported  # other items pass through untouched
    pages = [item for item in exported if "body" in item]
    assert len(pages) == len(expected)
    for item in pages:
        digest = hashlib.sha256(base64.b64decode(item["body"])).hexdigest()
        assert digest == records[item["url"]]["sha256"]


@pytest.mark.parametrize("gzipped", [False, True])
@asyncio_test
async def test_recrawl_overwrites_in_place(tmp_path: Path, gzipped: bool) -> None:
    pages_dir = tmp_path / "pages"
    async with server() as base:
        urls = page_urls(base, 50)
        await crawl(PagesSpider, settings(pages_dir), urls=list(urls))
        config = settings(pages_dir, ASYNCFETCH_PAGES_GZIP=gzipped)
        crawler = await crawl(PagesSpider, config, urls=list(urls))
    assert crawler.stats is not None
    assert crawler.stats.get_value("log_count/ERROR") is None
    assert crawler.stats.get_value("asyncfetch/pages_written") == 50
    records = assert_pages_match_server(pages_dir, urls)
    assert all(r["path"].endswith(".gz") is gzipped for r in records.values())


@asyncio_test
async def test_unwritable_directory_stops_the_crawl_at_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # chmod does not stop root; a regular file where a directory should be does.
    (tmp_path / "file").write_bytes(b"")
    pages_dir = tmp_path / "file" / "pages"
    caplog.set_level(logging.INFO)
    async with server() as base:
        crawler = await crawl(PagesSpider, settings(pages_dir), urls=list(page_urls(base, 5)))
    assert crawler.stats is not None
    assert crawler.stats.get_value("finish_reason") == WRITE_ERROR_REASON
    assert crawler.stats.get_value("downloader/request_count") is None
    assert crawler.stats.get_value("asyncfetch/pages_written") is None
    (error,) = error_records(caplog)
    assert error.name == "scrapy_asyncfetch.pipelines"
    assert error.exc_info is None
    assert str(pages_dir) in error.getMessage()
    assert "Not a directory" in error.getMessage()


@asyncio_test
async def test_write_error_mid_crawl_keeps_earlier_pages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pages_dir = tmp_path / "pages"
    caplog.set_level(logging.INFO)
    async with server() as base:
        urls = page_urls(base, 100)
        used_shards = {page_relpath(url)[:2] for url in urls}
        # A page number (even: text/html) whose shard no earlier page uses.
        late_n = next(
            n
            for n in range(1000, 100_000, 2)
            if page_relpath(f"{base}/page/{n}")[:2] not in used_shards
        )
        late_url = f"{base}/page/{late_n}"
        # A regular file where its shard directory should be: writing it fails, even as root.
        shard = pages_dir / page_relpath(late_url, served_type(late_n))[:2]
        shard.parent.mkdir(parents=True)
        shard.write_bytes(b"")
        crawler = await crawl(PagesSpider, settings(pages_dir), urls=list(urls), late_url=late_url)

    stats = crawler.stats
    assert stats is not None
    assert stats.get_value("finish_reason") == WRITE_ERROR_REASON
    assert stats.get_value("asyncfetch/pages_written") == 100
    assert stats.get_value("asyncfetch/page_write_errors") == 1
    assert stats.get_value("item_dropped_count") == 1
    (error,) = error_records(caplog)
    assert error.name == "scrapy_asyncfetch.pipelines"
    assert error.exc_info is None
    assert str(pages_dir) in error.getMessage()
    assert "File exists" in error.getMessage()
    dropped = [r for r in caplog.records if r.getMessage().startswith("Dropped:")]
    assert len(dropped) == 1
    assert WRITE_ERROR_REASON in dropped[0].getMessage()
    # Everything before the failure is on disk and listed, after a clean compaction.
    shard.unlink()
    assert_pages_match_server(pages_dir, urls)
    assert late_url not in read_manifest(str(pages_dir / MANIFEST_NAME))
