"""Cluster crawls: real workers (``scrapy runspider`` processes), a real redis-server,
a real site on several loopback hosts that measures the busiest moment per host."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Site, Worker, outcomes
from tests.conftest import asyncio_test
from tests.redis_harness import RedisServer
from tests.scrapyd_harness import log_errors, read_jsonl, stat

CAP = 2  # CONCURRENT_REQUESTS_PER_DOMAIN of the test spider


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def write_urls(path: Path, urls: list[str]) -> Path:
    path.write_text("\n".join(urls) + "\n", encoding="utf-8")
    return path


def assert_clean(log: str) -> None:
    assert stat(log, "finish_reason") == "finished", log[-4000:]
    assert log_errors(log) == [], log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    assert "ScrapyDeprecationWarning" not in log


@asyncio_test
async def test_two_workers_share_one_crawl_politely(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with Site(hosts=8, pages=30, latency=0.05).running() as site:
        # Every worker runs the same start(), and follows the same links: each URL must
        # still be fetched once.
        urls = write_urls(tmp_path / "urls.txt", site.urls())
        args = ("-a", f"urls={urls}", "-a", "follow=1", "-s", "CONCURRENT_REQUESTS=4")
        workers = [
            Worker(tmp_path, name, redis_server.url, "polite", *args) for name in ("one", "two")
        ]
        await asyncio.gather(*(worker.start() for worker in workers))
        logs = await asyncio.gather(*(worker.wait() for worker in workers))
    for log in logs:
        assert_clean(log)
    expected = set(site.urls())
    assert set(site.fetched) == expected
    assert max(site.fetched.values()) == 1, site.fetched.most_common(3)
    # Exact politeness across workers: never more than the cap on a host at once.
    assert dict(site.busiest) == {f"127.0.0.{h}": CAP for h in range(1, 9)}
    records = await outcomes(redis_server.url, "polite")
    assert sorted(r["url"] for r in records.values()) == sorted(expected)
    by_worker = Counter(r["worker"] for r in records.values())
    assert len(by_worker) == 2, by_worker  # both fetched a share
    for worker in workers:
        written = read_jsonl(worker.pages_dir / "manifest.jsonl")
        assert len(written) == by_worker[worker_id(worker.log())]


def worker_id(log: str) -> str:
    (line,) = [line for line in log.splitlines() if "this worker is" in line]
    return line.split("this worker is ")[1].strip()
