"""The frontier's Lua scripts against a real redis-server: leases, duplicates, outcomes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio

from scrapy_asyncfetch._cluster import unsent
from scrapy_asyncfetch._cluster.frontier import Frontier, Group, Push, Refill, Settle, SyncBatch
from scrapy_asyncfetch._cluster.keys import Keys
from tests.conftest import asyncio_test
from tests.redis_harness import RedisServer


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def keys(redis_server: RedisServer, request: pytest.FixtureRequest) -> Keys:
    return Keys(request.node.name)


class Workers:
    """Frontier clients of one crawl, as several workers would hold them."""

    def __init__(self, url: str, keys: Keys) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        self.keys = keys

    def worker(self, name: str, lease: float = 30.0) -> Frontier:
        return Frontier(self.client, self.keys, name, lease)


def push(id_: str, domain: str = "a", fingerprint: str | None = None) -> Push:
    return Push(id_, fingerprint if fingerprint is not None else f"fp-{id_}", domain, id_.encode())


def ids(result_groups: list[Group]) -> list[str]:
    return [request_id for group in result_groups for request_id, _ in group.requests]


def record(url: str) -> str:
    return json.dumps({"url": url})


@asyncio_test
async def test_duplicates_are_filtered_across_workers(
    redis_server: RedisServer, keys: Keys
) -> None:
    workers = Workers(redis_server.url, keys)
    one, two = workers.worker("one"), workers.worker("two")
    first = await one.sync(SyncBatch(push=[push("1"), push("2")]))
    second = await two.sync(SyncBatch(push=[push("3", fingerprint="fp-1"), push("4")]))
    assert first.duplicates == []
    assert second.duplicates == ["3"]
    # dont_filter: no fingerprint, never a duplicate.
    third = await two.sync(SyncBatch(push=[push("5", fingerprint=""), push("6", fingerprint="")]))
    assert third.duplicates == []
    assert third.outstanding == 5


@asyncio_test
async def test_a_batch_applied_twice_is_applied_once(redis_server: RedisServer, keys: Keys) -> None:
    one = Workers(redis_server.url, keys).worker("one")
    batch = SyncBatch(push=[push("1"), push("2")])
    await one.sync(batch)
    again = await one.sync(batch)  # as after a reply lost to a dropped connection
    assert again.duplicates == []
    assert again.outstanding == 2


@asyncio_test
async def test_one_worker_leases_a_domain_at_a_time(redis_server: RedisServer, keys: Keys) -> None:
    workers = Workers(redis_server.url, keys)
    one, two = workers.worker("one"), workers.worker("two")
    await one.sync(SyncBatch(push=[push(str(n), "a") for n in range(6)] + [push("b1", "b")]))
    taken = await one.sync(SyncBatch(take=1, batch=4))
    assert [g.domain for g in taken.groups] == ["a"]
    assert ids(taken.groups) == ["0", "1", "2", "3"]
    # Domain a is one's: two gets b only, though a has requests left.
    other = await two.sync(SyncBatch(take=5, batch=4))
    assert [g.domain for g in other.groups] == ["b"]
    # one refills a while it holds it, then releases it once drained and idle.
    more = await one.sync(SyncBatch(refill=[Refill("a", 4)]))
    assert ids(more.groups) == ["4", "5"]
    done = await one.sync(
        SyncBatch(
            settle=[Settle(str(n), "pages", record(str(n))) for n in range(6)],
            refill=[Refill("a", 4, idle=True, state='{"x": 1}', remaining=0)],
        )
    )
    assert done.settled == 6
    assert done.released == ["a"]
    # Released with nothing queued: not leasable until something is pushed.
    assert (await two.sync(SyncBatch(take=5, batch=4))).groups == []
    await two.sync(SyncBatch(push=[push("a7", "a")]))
    again = await two.sync(SyncBatch(take=5, batch=4))
    assert [(g.domain, g.state) for g in again.groups] == [("a", '{"x": 1}')]


@asyncio_test
async def test_a_released_domain_waits_for_its_next_start(
    redis_server: RedisServer, keys: Keys
) -> None:
    workers = Workers(redis_server.url, keys)
    one, two = workers.worker("one"), workers.worker("two")
    await one.sync(SyncBatch(push=[push("1"), push("2")]))
    await one.sync(SyncBatch(take=1, batch=1))
    await one.sync(
        SyncBatch(
            settle=[Settle("1", "pages", record("1"))],
            refill=[Refill("a", 0, idle=True, remaining=0.6)],
        )
    )
    early = await two.sync(SyncBatch(take=1, batch=1))
    assert early.groups == []
    assert early.next_ready is not None
    assert 0.3 < early.next_ready <= 0.6
    await asyncio.sleep(early.next_ready + 0.05)
    late = await two.sync(SyncBatch(take=1, batch=1))
    assert ids(late.groups) == ["2"]


@asyncio_test
async def test_outcomes_are_exactly_once(redis_server: RedisServer, keys: Keys) -> None:
    workers = Workers(redis_server.url, keys)
    one, two = workers.worker("one", lease=0.3), workers.worker("two")
    await one.keep()
    await one.sync(SyncBatch(push=[push("1"), push("2")], take=1, batch=2))
    # one stops renewing; two reaps its lease: its requests go back to the front.
    await asyncio.sleep(0.4)
    kept = await two.keep()
    assert (kept.requeued, kept.reaped_workers) == (2, 1)
    retaken = await two.sync(SyncBatch(take=1, batch=2))
    assert sorted(ids(retaken.groups)) == ["1", "2"]
    # one's late outcome is ignored: request 1 is two's now.
    late = await one.sync(SyncBatch(settle=[Settle("1", "pages", record("late"))]))
    assert late.settled == 0
    assert late.reaped  # it learns it had been reaped
    done = await two.sync(
        SyncBatch(settle=[Settle("1", "pages", record("two")), Settle("1", "pages", record("x"))])
    )
    assert done.settled == 1
    # An outcome for a request that never entered the frontier (refused locally) is kept.
    local = await two.sync(SyncBatch(settle=[Settle("input:bad", "failures", record("bad"))]))
    assert local.settled == 1
    outcome: bytes = await workers.client.hget(keys.outcomes, "1")  # type: ignore[assignment]
    assert json.loads(outcome) == {"url": "two"}
    assert (await two.cluster_stats())["pages"] == 1


@asyncio_test
async def test_leaving_gives_everything_back(redis_server: RedisServer, keys: Keys) -> None:
    workers = Workers(redis_server.url, keys)
    one, two = workers.worker("one"), workers.worker("two")
    await one.sync(SyncBatch(push=[push(str(n)) for n in range(3)], take=1, batch=2))
    left = await one.keep([("a", '{"s": 2}', 0.0)], leaving=True)
    assert left.requeued == 2
    taken = await two.sync(SyncBatch(take=1, batch=5))
    assert [g.state for g in taken.groups] == ['{"s": 2}']
    assert sorted(ids(taken.groups)) == ["0", "1", "2"]


@asyncio_test
async def test_a_retry_replaces_its_request(redis_server: RedisServer, keys: Keys) -> None:
    workers = Workers(redis_server.url, keys)
    one, two = workers.worker("one"), workers.worker("two")
    await one.sync(SyncBatch(push=[push("1", "a")], take=1, batch=1))
    # Redirected to domain b: same id, no longer in flight here, queued for b.
    moved = await one.sync(SyncBatch(push=[Push("1", "", "b", b"redirected", replace=True)]))
    assert moved.outstanding == 1
    taken = await two.sync(SyncBatch(take=2, batch=1))
    assert [(g.domain, g.requests) for g in taken.groups] == [("b", [("1", b"redirected")])]
    # Sent again (its reply lost): not queued a second time.
    again = await one.sync(SyncBatch(push=[Push("1", "", "b", b"redirected", replace=True)]))
    assert again.outstanding == 1
    assert await workers.client.llen(keys.queue("b")) == 0


@asyncio_test
async def test_a_redirect_to_a_request_already_seen_is_a_duplicate(
    redis_server: RedisServer, keys: Keys
) -> None:
    one = Workers(redis_server.url, keys).worker("one")
    await one.sync(SyncBatch(push=[push("1", "a"), push("2", "a")], take=1, batch=2))
    redirects = [
        Push("1", "fp-2", "a", b"to 2", replace=True),  # where request 2 already is
        Push("2", "fp-new", "b", b"to new", replace=True),
    ]
    moved = await one.sync(SyncBatch(push=redirects))
    assert moved.duplicates == ["1"]
    # Request 1 stays in flight here until its outcome (the filtered redirect) comes.
    assert moved.outstanding == 2
    settled = await one.sync(SyncBatch(settle=[Settle("1", "failures", record("1"))]))
    assert (settled.settled, settled.outstanding) == (1, 1)
    # Sent again (its reply lost): the redirect that entered is not taken for a duplicate.
    assert (await one.sync(SyncBatch(push=redirects[1:]))).duplicates == []


@asyncio_test
async def test_a_worker_that_came_first_shares_its_domains(
    redis_server: RedisServer, keys: Keys
) -> None:
    workers = Workers(redis_server.url, keys)
    one, two = workers.worker("one"), workers.worker("two")
    domains = "abcd"
    await one.sync(SyncBatch(push=[push(f"{d}{n}", d) for d in domains for n in range(4)]))
    first = await one.sync(SyncBatch(take=10, batch=1))
    assert (sorted(g.domain for g in first.groups), first.share) == (list(domains), 4)
    # two asks and gets nothing: it is hungry now, so one's share halves.
    hungry = await two.sync(SyncBatch(take=10, batch=1))
    assert (hungry.groups, hungry.share) == ([], 2)
    assert (await one.sync(SyncBatch())).share == 2
    # one lets two domains go as they drain (here: at once, idle); two takes them,
    # and one takes no more than its share.
    given = await one.sync(
        SyncBatch(
            settle=[Settle(f"{d}0", "pages", record(d)) for d in "cd"],
            refill=[Refill(d, 0, idle=True) for d in "cd"],
            take=10,
        )
    )
    assert (sorted(given.released), given.groups) == (["c", "d"], [])
    taken = await two.sync(SyncBatch(take=10, batch=1))
    assert sorted(g.domain for g in taken.groups) == ["c", "d"]


@asyncio_test
async def test_what_a_worker_could_not_send_is_replayed_as_it_would_have_been(
    redis_server: RedisServer, keys: Keys, tmp_path: Path
) -> None:
    workers = Workers(redis_server.url, keys)
    gone = workers.worker("gone")
    await gone.sync(SyncBatch(push=[push("1"), push("2")], take=1, batch=2))
    # Redis was out of reach when "gone" closed: request 1's outcome, a new request
    # and the state of domain a stayed in its file.
    path = unsent.path_for(str(tmp_path), "gone")
    left = unsent.Unsent(
        keys.crawl,
        "gone",
        settle=[Settle("1", "pages", record("1"))],
        push=[push("3", "b")],
        states=[("a", '{"s": 1}', 0.0)],
    )
    unsent.write(path, left)
    assert unsent.find([str(tmp_path)]) == [path]
    files, settled = await unsent.replay_files(workers.client, keys, [path])
    assert (files, settled) == (1, 1)
    assert not path.exists()
    # Request 2, which "gone" held without an outcome, is back with its domain's state;
    # request 3 is queued.
    taken = await workers.worker("next").sync(SyncBatch(take=2, batch=5))
    assert sorted((g.domain, g.state) for g in taken.groups) == [("a", '{"s": 1}'), ("b", "")]
    assert sorted(ids(taken.groups)) == ["2", "3"]
    assert taken.outstanding == 2
    # Replayed again (say, by a second worker at once): nothing changes.
    unsent.write(path, left)
    assert await unsent.replay_files(workers.client, keys, [path]) == (1, 0)


@asyncio_test
async def test_an_unsent_file_of_another_crawl_or_damaged_is_named(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    damaged = tmp_path / "cluster-unsent-x.jsonl"
    damaged.write_text("not json\n")
    with pytest.raises(ValueError, match=r"cluster-unsent-x\.jsonl is not a file of unsent"):
        unsent.read(damaged)
    other = unsent.path_for(str(tmp_path), "y")
    unsent.write(other, unsent.Unsent("other-crawl", "y"))
    client = redis.asyncio.Redis.from_url(redis_server.url)
    with pytest.raises(ValueError, match="of crawl 'other-crawl', not 'this-crawl'"):
        await unsent.replay_files(client, Keys("this-crawl"), [other])
    assert other.exists()  # left where it is
    await client.aclose()
