"""Runner 3: plain asyncio + aiohttp, the usual hand-written script.

One ``ClientSession``; one task per URL under ``gather``; an ``asyncio.Semaphore(C)`` caps
concurrency. The connector's pool limit is raised to C (its default of 100 would otherwise
silently cap C=200/500), which is what someone tuning this script would do.
"""

from __future__ import annotations

import asyncio

import aiohttp

from benchmarks.runners.common import (
    RunnerArgs,
    RunResult,
    Snapshot,
    current_rss_mb,
    page_urls,
    parse_args,
)


async def crawl(args: RunnerArgs) -> tuple[int, int]:
    semaphore = asyncio.Semaphore(args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=args.concurrency)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def fetch(url: str) -> bool:
            async with semaphore:
                try:
                    async with session.get(url) as response:
                        await response.read()
                        return response.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    return False

        outcomes = await asyncio.gather(*(fetch(u) for u in page_urls(args.base_url, args.pages)))
    ok = sum(outcomes)
    return ok, len(outcomes) - ok


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rss_start = current_rss_mb()

    async def measured() -> tuple[Snapshot, Snapshot, tuple[int, int]]:
        # Measure inside the loop so event-loop creation is not counted, as for Scrapy.
        start = Snapshot.take()
        counts = await crawl(args)
        return start, Snapshot.take(), counts

    start, end, (ok, errors) = asyncio.run(measured())
    RunResult.between(
        "3-aiohttp", args, start, end, pages_ok=ok, errors=errors, rss_start_mb=rss_start
    ).emit()


if __name__ == "__main__":
    main()
