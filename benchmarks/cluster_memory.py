"""Redis memory per queued request in cluster mode: push N requests (as a crawl of
``pages`` would: one pickled Scrapy request each, its fingerprint in the duplicate
filter) into a fresh crawl on a running Redis, and read INFO memory before and after.

    python -m benchmarks.cluster_memory redis://127.0.0.1:6379/15 100000
"""

from __future__ import annotations

import asyncio
import pickle
import sys

import redis.asyncio
from scrapy import Request
from scrapy.utils.request import RequestFingerprinter

from scrapy_asyncfetch._cluster.frontier import Frontier, Push, SyncBatch
from scrapy_asyncfetch._cluster.keys import Keys

BATCH = 500


async def measure(url: str, count: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    keys = Keys("memory-benchmark")
    frontier = Frontier(client, keys, "bench", lease=30)
    fingerprinter = RequestFingerprinter()
    await client.delete(*(await client.keys(keys.prefix + "*") or [keys.requests]))
    before = (await client.info("memory"))["used_memory"]
    for start in range(0, count, BATCH):
        pushes = []
        for n in range(start, min(start + BATCH, count)):
            request = Request(f"http://host{n % 1000}.example/section/page-{n}.html")
            payload = pickle.dumps(request.to_dict(), protocol=pickle.HIGHEST_PROTOCOL)
            pushes.append(
                Push(
                    f"run-{n}", fingerprinter.fingerprint(request).hex(), f"host{n % 1000}", payload
                )
            )
        await frontier.sync(SyncBatch(push=pushes))
    after = (await client.info("memory"))["used_memory"]
    print(
        f"{count} queued requests over 1000 domains: {(after - before) / 2**20:.1f} MiB, "
        f"{(after - before) / count:.0f} bytes per request "
        f"(payload {len(payload)} bytes, {frontier.calls} calls)"
    )
    await client.delete(*(await client.keys(keys.prefix + "*")))
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(measure(sys.argv[1], int(sys.argv[2])))
