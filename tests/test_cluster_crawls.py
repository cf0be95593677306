"""Cluster crawls: real workers (``scrapy runspider`` processes), a real redis-server,
a real site on several loopback hosts that measures the busiest moment per host."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio

from scrapy_asyncfetch.warc import warc_files
from tests.cluster.harness import Site, Worker, export, outcomes
from tests.conftest import asyncio_test, wait_until
from tests.redis_harness import RedisServer
from tests.scrapyd_harness import log_errors, read_jsonl, stat
from tests.test_warc import warcio_cli

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


async def run_all(workers: list[Worker]) -> None:
    """Start the workers at once and wait for every one; each must finish cleanly."""
    await asyncio.gather(*(worker.start() for worker in workers))
    logs = await asyncio.gather(*(worker.wait() for worker in workers))
    for log in logs:
        assert_clean(log)


async def fetched_at_least(site: Site, count: int, within: float = 60) -> None:
    assert await wait_until(lambda: sum(site.fetched.values()) >= count, within), site.fetched


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
        await run_all(workers)
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
        assert len(written) == by_worker[worker.worker_id()]


@asyncio_test
async def test_the_download_delay_holds_across_workers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    delay = 0.3
    async with Site(hosts=3, pages=30, latency=0.01, across=True).running() as site:
        # From one page per host, following links to the next host: a host's queue runs
        # dry now and then, and is released. Two domains at most per worker
        # (CONCURRENT_REQUESTS = the cap): the first worker, alone at first, leases each
        # host in turn; the second, once it asks, gets the hosts beyond the first's share.
        urls = write_urls(tmp_path / "urls.txt", site.urls(range(1)))
        args = ["-a", f"urls={urls}", "-a", "follow=1", "-s", f"DOWNLOAD_DELAY={delay}"]
        args += ["-s", f"CONCURRENT_REQUESTS={CAP}", "-s", "DOWNLOAD_DELAY_JITTER=0"]
        first = await Worker(tmp_path, "1", redis_server.url, "delay", *args).start()
        await fetched_at_least(site, 3)
        second = await Worker(tmp_path, "2", redis_server.url, "delay", *args).start()
        for log in await asyncio.gather(first.wait(), second.wait()):
            assert_clean(log)
    assert set(site.fetched) == set(site.urls())
    for host, arrivals in site.arrivals.items():
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        # A little under the delay: the requests' arrivals, not their starts, are timed.
        assert min(gaps) > delay - 0.05, (host, sorted(gaps)[:3])
    records = await outcomes(redis_server.url, "delay")
    hosts_by_worker = {
        (record["url"].split("/")[2], record["worker"]) for record in records.values()
    }
    assert len(hosts_by_worker) > len(site.arrivals), "no host changed hands"


@asyncio_test
async def test_a_redirect_to_a_page_already_in_the_crawl_is_filtered(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with Site(hosts=2, pages=10, latency=0.01).running() as site:
        # Every /r/n redirects to /p/n, which start() entered first: as in one Scrapy
        # process, the redirect is filtered, and /p/n is fetched once in the cluster.
        pages = site.urls()
        redirects = [url.replace("/p/", "/r/") for url in pages]
        urls = write_urls(tmp_path / "urls.txt", pages + redirects)
        workers = [
            Worker(tmp_path, name, redis_server.url, "redirects", "-a", f"urls={urls}")
            for name in ("one", "two")
        ]
        await run_all(workers)
    assert Counter(site.fetched.values()) == {1: len(pages) + len(redirects)}, site.fetched
    records = list((await outcomes(redis_server.url, "redirects")).values())
    assert sorted(r["url"] for r in records) == sorted(pages + redirects)
    filtered = {r["url"] for r in records if r.get("reason") == "IgnoreRequest"}
    assert filtered == set(redirects)
    assert all("after a redirect" in r["message"] for r in records if "reason" in r)


@asyncio_test
async def test_unreachable_redis_refuses_the_crawl(closed_port: int, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port}/0"
    log = await (await Worker(tmp_path, "alone", url, "nowhere").start()).wait(60)
    assert stat(log, "finish_reason") == "asyncfetch_redis_unavailable", log[-3000:]
    (error,) = log_errors(log)
    assert "ASYNCFETCH_REDIS_URL" in error
    assert f"127.0.0.1:{closed_port}" in error
    assert "Traceback" not in log


@asyncio_test
async def test_a_killed_worker_loses_nothing_and_a_late_one_joins(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    lease = 3.0
    # Each host takes a worker about 6 s at its cap; and a worker leases two hosts at most
    # (CONCURRENT_REQUESTS = the cap): the survivor is still busy with its own when the
    # dead worker's lease runs out, so the late worker gets those.
    async with Site(hosts=4, pages=120, latency=0.1).running() as site:
        urls = write_urls(tmp_path / "urls.txt", site.urls())
        args = ["-a", f"urls={urls}", "-s", f"ASYNCFETCH_CLUSTER_LEASE={lease}"]
        args += ["-s", f"CONCURRENT_REQUESTS={CAP}"]
        doomed, survivor = (
            Worker(tmp_path, name, redis_server.url, "kill", *args)
            for name in ("doomed", "survivor")
        )
        await asyncio.gather(doomed.start(), survivor.start())
        await fetched_at_least(site, 20)
        doomed.kill()
        late = await Worker(tmp_path, "late", redis_server.url, "kill", *args).start()
        await fetched_at_least(site, 100)
        survivor_log, late_log = await asyncio.gather(survivor.wait(), late.wait())
        assert doomed.proc is not None
        await doomed.proc.wait()
    for log in (survivor_log, late_log):
        assert_clean(log)
    expected = set(site.urls())
    assert set(site.fetched) == expected
    # What the killed worker held was fetched again (at least once); and nobody ever
    # went past a host's cap, not even while a dead worker's lease ran out.
    assert dict(site.busiest) == {f"127.0.0.{h}": CAP for h in range(1, 5)}
    records = await outcomes(redis_server.url, "kill")
    assert len(records) == len(expected)
    assert sorted(r["url"] for r in records.values()) == sorted(expected)
    by_worker = Counter(r["worker"] for r in records.values())
    assert by_worker[late.worker_id()] > 0, by_worker
    assert "worker(s) stopped renewing their lease" in survivor_log + late_log
    # The export has every URL exactly once, and each page where its worker wrote it.
    code, output = await export(redis_server.url, "kill", tmp_path / "merged")
    assert code == 0, output
    manifest = read_jsonl(tmp_path / "merged" / "manifest.jsonl")
    assert sorted(r["url"] for r in manifest) == sorted(expected)
    assert read_jsonl(tmp_path / "merged" / "failures.jsonl") == []
    pages_dirs = {w.worker_id(): w.pages_dir for w in (survivor, late)}
    for record in manifest:
        if record["worker"] in pages_dirs:  # the killed worker's pages are on its disk too
            assert (pages_dirs[record["worker"]] / record["path"]).exists(), record


@asyncio_test
async def test_a_worker_that_joins_late_gets_a_fair_share_of_the_hosts(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Two hosts, about 10 s each at the cap; the first worker may lease both (its
    # CONCURRENT_REQUESTS fills two caps twice over) and does, being alone. Once the
    # second asks for work, the first lets one host go as soon as it has drained.
    async with Site(hosts=2, pages=200, latency=0.1).running() as site:
        urls = write_urls(tmp_path / "urls.txt", site.urls())
        args = ["-a", f"urls={urls}", "-s", f"CONCURRENT_REQUESTS={2 * CAP}"]
        first = await Worker(tmp_path, "first", redis_server.url, "fair", *args).start()
        await fetched_at_least(site, 20)
        late = await Worker(tmp_path, "late", redis_server.url, "fair", *args).start()
        for log in await asyncio.gather(first.wait(), late.wait()):
            assert_clean(log)
    records = await outcomes(redis_server.url, "fair")
    assert sorted(r["url"] for r in records.values()) == sorted(site.urls())
    hosts: dict[str, set[str]] = {}
    for record in records.values():
        hosts.setdefault(record["worker"], set()).add(record["url"].split("/")[2])
    assert hosts[first.worker_id()], hosts
    assert hosts.get(late.worker_id()), hosts
    by_worker = Counter(r["worker"] for r in records.values())
    assert by_worker[late.worker_id()] >= 20, by_worker
    assert dict(site.busiest) == {f"127.0.0.{h}": CAP for h in range(1, 3)}


@asyncio_test
async def test_export_names_the_setting_when_redis_is_unreachable(
    closed_port: int, tmp_path: Path
) -> None:
    code, output = await export(f"redis://127.0.0.1:{closed_port}/0", "x", tmp_path / "out")
    assert code == 1
    assert "ASYNCFETCH_REDIS_URL" in output
    assert "Traceback" not in output


@asyncio_test
async def test_pages_workers_fetch_urls_pushed_to_start_urls(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with Site(hosts=3, pages=10, latency=0.02).running() as site:
        first, *pushed = site.urls()
        # scrapy-redis's convention: URLs pushed to <crawl>:start_urls while the crawl runs.
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await client.rpush("pushed:start_urls", *pushed)
        finally:
            await client.aclose()
        args = ("-a", f"start_urls={first}")
        workers = [
            Worker(tmp_path, name, redis_server.url, "pushed", *args, project=True)
            for name in ("one", "two")
        ]
        await run_all(workers)
    assert set(site.fetched) == set(site.urls())
    assert max(site.fetched.values()) == 1
    written = [r for w in workers for r in read_jsonl(w.pages_dir / "manifest.jsonl")]
    assert sorted(r["url"] for r in written) == sorted(site.urls())


@asyncio_test
async def test_workers_wait_out_a_redis_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        async with Site(hosts=4, pages=30, latency=0.1).running() as site:
            urls = write_urls(tmp_path / "urls.txt", site.urls())
            args = ["-a", f"urls={urls}", "-s", "ASYNCFETCH_CLUSTER_LEASE=5"]
            workers = [Worker(tmp_path, name, server.url, "restart", *args) for name in "ab"]
            await asyncio.gather(*(worker.start() for worker in workers))
            await fetched_at_least(site, 20)
            server.kill()
            await asyncio.sleep(1.0)
            server.start()  # same port; with AOF, the frontier and outcomes are back
            logs = await asyncio.gather(*(worker.wait() for worker in workers))
        for log in logs:
            assert stat(log, "finish_reason") == "finished", log[-4000:]
            assert log_errors(log) == [], log[-4000:]
            assert "Traceback" not in log, log[-4000:]
        assert any("Redis (ASYNCFETCH_REDIS_URL) unreachable" in log for log in logs)
        assert set(site.fetched) == set(site.urls())
        records = await outcomes(server.url, "restart")
    # At least once fetched, exactly one outcome each.
    assert sorted(r["url"] for r in records.values()) == sorted(site.urls())


@pytest.mark.parametrize("recorded_by", ["export", "next worker"])
@asyncio_test
async def test_outcomes_a_worker_could_not_hand_to_redis_are_recorded_later(
    tmp_path: Path, recorded_by: str
) -> None:
    with RedisServer(tmp_path / "redis", appendonly=True) as server:
        async with Site(hosts=2, pages=40, latency=0.2).running() as site:
            urls = write_urls(tmp_path / "urls.txt", site.urls())
            args = ["-a", f"urls={urls}", "-s", "ASYNCFETCH_CLUSTER_LEASE=3"]
            worker = await Worker(tmp_path, "w", server.url, "unsent", *args).start()
            await fetched_at_least(site, 10)
            server.kill()
            await asyncio.sleep(1.0)  # the pages in flight are written meanwhile
            worker.interrupt()  # and it closes with Redis still out of reach
            log = await worker.wait()
            assert stat(log, "finish_reason") == "shutdown", log[-4000:]
            assert "Traceback" not in log, log[-4000:]
            (spill,) = worker.pages_dir.glob("cluster-unsent-*.jsonl")
            (error,) = [e for e in log_errors(log) if "to close" in e]
            assert str(spill) in error
            assert "asyncfetch-export --unsent" in error
            written = read_jsonl(worker.pages_dir / "manifest.jsonl")
            server.start()  # with AOF: all it had recorded is back
            assert len(await outcomes(server.url, "unsent")) < len(written)
            extra = []
            if recorded_by == "export":
                extra = ["--unsent", str(worker.pages_dir)]
            else:
                # Started on the same directory, it records the file, then fetches what
                # the first worker held and the rest.
                await run_all([Worker(tmp_path, "w", server.url, "unsent", *args)])
            code, output = await export(server.url, "unsent", tmp_path / "merged", *extra)
            assert code == 0, output
    # Every page the first worker wrote is in the export, as in its own manifest (the
    # second worker wrote the rest); the file was recorded, then removed.
    exported = read_jsonl(tmp_path / "merged" / "manifest.jsonl")
    assert {r["url"] for r in written} <= {r["url"] for r in exported}
    if recorded_by == "next worker":
        assert sorted(r["url"] for r in exported) == sorted(site.urls())
    assert not spill.exists()


@asyncio_test
async def test_workers_archive_into_one_warc_directory(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Both workers write their WARC files into the same directory: names never collide,
    # every file verifies with warcio's checker, every URL is archived once, by one worker.
    warc_dir = tmp_path / "warc"
    async with Site(hosts=8, pages=30, latency=0.05).running() as site:
        urls = write_urls(tmp_path / "urls.txt", site.urls())
        # Four at a time each, as in the test above: both workers get a share of the hosts.
        args = (
            "-a",
            f"urls={urls}",
            "-s",
            "CONCURRENT_REQUESTS=4",
            "-s",
            f"ASYNCFETCH_WARC_DIR={warc_dir}",
        )
        workers = [
            Worker(tmp_path, name, redis_server.url, "archived", *args) for name in ("one", "two")
        ]
        await run_all(workers)
    files = warc_files(str(warc_dir))
    assert len(files) >= 2  # one at least per worker
    checked = warcio_cli("check", "-v", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "digest fail" not in checked.stdout
    index = [json.loads(line) for line in warcio_cli("index", *files).stdout.splitlines()]
    archived = Counter(e["warc-target-uri"] for e in index if e["warc-type"] == "response")
    assert set(archived) == set(site.urls())
    assert max(archived.values()) == 1, archived.most_common(3)


@asyncio_test
async def test_progress_counts_the_whole_cluster(redis_server: RedisServer, tmp_path: Path) -> None:
    # Each worker's progress line counts every worker's outcomes, against a total known
    # from the frontier: the last line of each reads all of the crawl, not its own share.
    async with Site(hosts=8, pages=30, latency=0.05).running() as site:
        urls = write_urls(tmp_path / "urls.txt", site.urls())
        args = [
            *("-a", f"urls={urls}", "-s", "CONCURRENT_REQUESTS=4"),
            *("-s", "ASYNCFETCH_PROGRESS=line", "-s", "LOGSTATS_INTERVAL=0.2"),
        ]
        workers = [
            Worker(tmp_path, name, redis_server.url, "progress", *args) for name in ("one", "two")
        ]
        await run_all(workers)
    total = len(site.urls())
    shares = []
    for worker in workers:
        lines = [line for line in worker.log().splitlines() if "Progress: " in line]
        # The periodic lines (the final one at close is this worker's own share).
        cluster = [line for line in lines[:-1] if f"/{total} done" in line]
        assert cluster, lines[-5:]
        assert any(f"{total}/{total} done (100%), {total} pages written" in ln for ln in cluster)
        shares.append(len(read_jsonl(worker.pages_dir / "manifest.jsonl")))
    assert sum(shares) == total
    assert min(shares) > 0, shares
