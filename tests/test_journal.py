"""The in-flight journal on its own: what a killed run leaves is handed back once."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from scrapy_asyncfetch.journal import JOURNAL_NAME, InFlightJournal
from scrapy_asyncfetch.storage import read_manifest
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer
from tests.spiders import PageSpider


def test_unfinished_requests_come_back_once(tmp_path: Path) -> None:
    journal = InFlightJournal(str(tmp_path))
    assert journal.open() == []
    journal.started("a", {"url": "http://h1.test/a", "body": b"\x00"})
    journal.started("b", {"url": "http://h1.test/b"})
    journal.started("c", {"url": "http://h1.test/c"})
    journal.done("b")
    # A retry of "c" dispatched again: the latest copy wins.
    journal.started("c", {"url": "http://h1.test/c", "meta": {"retry_times": 1}})
    # SIGKILL: no close, and a line torn in the middle.
    with open(journal.path, "ab") as file:
        file.write(b'{"started": "d", "requ')

    again = InFlightJournal(str(tmp_path))
    unfinished = sorted(again.open(), key=lambda d: d["url"])
    assert unfinished == [
        {"url": "http://h1.test/a", "body": b"\x00"},
        {"url": "http://h1.test/c", "meta": {"retry_times": 1}},
    ]
    # Handed back once: the new run starts an empty journal.
    again.close()
    assert os.path.getsize(tmp_path / JOURNAL_NAME) == 0
    assert InFlightJournal(str(tmp_path)).open() == []


@asyncio_test
async def test_stopped_crawl_resumes_what_was_in_flight(
    mockserver: MockServer, tmp_path: Path
) -> None:
    """A graceful stop cancels requests in flight; with JOBDIR they are neither
    failures nor lost (Scrapy alone would have them in its seen set): the next
    run fetches them, and every URL ends exactly once."""
    urls = [mockserver.url(f"/delay/0.3?n={i}", host=1 + i % 2) for i in range(60)]
    settings = {
        "JOBDIR": str(tmp_path / "job"),
        "ASYNCFETCH_PAGES_DIR": str(tmp_path / "pages"),
        "ITEM_PIPELINES": {"scrapy_asyncfetch.PageWriterPipeline": 300},
        "ASYNCFETCH_SHUTDOWN_TIMEOUT": 0,
        "CONCURRENT_REQUESTS": 8,
        "LOG_LEVEL": "INFO",
    }

    stopping: list[asyncio.Future[None]] = []

    class Stopping(PageSpider):
        async def parse(self, response: Any) -> Any:
            async for page in super().parse(response):
                yield page
            written = read_manifest(str(tmp_path / "pages" / "manifest.jsonl"))
            if len(written) >= 10 and not stopping:
                stopping.append(asyncio.ensure_future(self.crawler.stop_async()))

    first = await crawl(Stopping, settings, requests=urls, errbacks=False, dont_filter=False)
    assert first.stats.get_value("finish_reason") == "shutdown"
    left = first.stats.get_value("asyncfetch/ledger/left_for_resume")
    assert left > 0
    assert not (tmp_path / "pages" / "failures.jsonl").read_text()

    second = await crawl(PageSpider, settings, requests=urls, errbacks=False, dont_filter=False)
    stats = second.stats
    assert stats.get_value("finish_reason") == "finished"
    assert stats.get_value("asyncfetch/ledger/requeued_in_flight") > 0
    manifest = read_manifest(str(tmp_path / "pages" / "manifest.jsonl"))
    assert set(manifest) == set(urls)
    assert not (tmp_path / "pages" / "failures.jsonl").read_text()
