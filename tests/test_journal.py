"""The in-flight journal on its own: what a killed run leaves is handed back once."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from scrapy_asyncfetch._journal import JOURNAL_NAME, Journal
from scrapy_asyncfetch.storage import read_manifest
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer
from tests.spiders import PageSpider


def _kill(journal: Journal) -> None:
    """What SIGKILL leaves: no close, and a line torn in the middle."""
    with open(journal.path, "ab") as file:
        file.write(b'{"scheduled": "z", "requ')


def _write_run(jobdir: Path) -> Journal:
    journal = Journal(str(jobdir))
    assert journal.open() == []
    journal.scheduled("a", {"url": "http://h1.test/a", "body": b"\x00"})
    journal.scheduled("b", {"url": "http://h1.test/b"})
    journal.scheduled("c", {"url": "http://h1.test/c"})
    journal.scheduled("q", {"url": "http://h1.test/q"})  # never leaves the queue
    for key in "abc":
        journal.dispatched(key)
    journal.done("b")
    # A retry of "c", scheduled again then dispatched: the latest copy wins.
    journal.scheduled("c", {"url": "http://h1.test/c", "meta": {"retry_times": 1}})
    journal.dispatched("c")
    return journal


def test_after_a_crash_everything_unfinished_comes_back(tmp_path: Path) -> None:
    _kill(_write_run(tmp_path))
    again = Journal(str(tmp_path))
    assert again.crashed
    unfinished = sorted(again.open(), key=lambda d: d["url"])
    assert unfinished == [
        {"url": "http://h1.test/a", "body": b"\x00"},
        {"url": "http://h1.test/c", "meta": {"retry_times": 1}},
        {"url": "http://h1.test/q"},
    ]


def test_after_a_clean_close_only_what_left_the_queue_comes_back(tmp_path: Path) -> None:
    _write_run(tmp_path).close()
    again = Journal(str(tmp_path))
    assert not again.crashed
    # "q" is in Scrapy's own persisted queue: handing it back would fetch it twice.
    assert sorted(d["url"] for d in again.open()) == ["http://h1.test/a", "http://h1.test/c"]
    # Still journalled as unfinished, in case this run is the one killed.
    _kill(again)
    assert len(Journal(str(tmp_path)).open()) == 3


def test_nothing_left_means_nothing_back(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path))
    journal.open()
    journal.scheduled("a", {"url": "http://h1.test/a"})
    journal.done("a")
    journal.close()
    again = Journal(str(tmp_path))
    assert again.open() == []
    again.close()
    assert os.path.getsize(tmp_path / JOURNAL_NAME) == 0


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
