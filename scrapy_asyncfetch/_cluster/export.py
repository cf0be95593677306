"""``scrapy asyncfetch-export -o DIR``: a cluster crawl's outcomes, from Redis, as the
``manifest.jsonl`` and ``failures.jsonl`` one process would have written (each page
record also names the worker that wrote it, and its path is under that worker's
ASYNCFETCH_PAGES_DIR). With ``--unsent PATH``, first the outcomes a worker could not hand
to Redis at its close. A command, not the crawl: the blocking Redis client is fine here
(the replay shares the crawl's ``redis.asyncio`` code, so it runs in a loop of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from .._failures import FAILURES_NAME
from ..storage import MANIFEST_NAME, atomic_write
from . import unsent
from .config import URL_SETTING, redis_url
from .keys import Keys

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SCAN_COUNT = 1000


class ExportCommand(ScrapyCommand):
    requires_project = False
    requires_crawler_process = False
    default_settings = {"LOG_LEVEL": "WARNING"}

    def syntax(self) -> str:
        return "-o DIR -s ASYNCFETCH_REDIS_URL=... -s ASYNCFETCH_CLUSTER=..."

    def short_desc(self) -> str:
        return "Write a cluster crawl's manifest.jsonl and failures.jsonl from Redis"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("-o", "--output", metavar="DIR", help="directory to write to")
        parser.add_argument(
            "--unsent",
            metavar="PATH",
            action="append",
            default=[],
            help="first record a worker's cluster-unsent-*.jsonl file (or those in a "
            "directory), left when Redis was out of reach at its close; repeatable",
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        if not opts.output:
            raise UsageError("-o DIR is required")
        url = redis_url(self.settings)
        crawl = self.settings.get("ASYNCFETCH_CLUSTER")
        if not url or not crawl:
            raise UsageError(f"set {URL_SETTING} and ASYNCFETCH_CLUSTER (-s NAME=VALUE)")
        keys = Keys(crawl)
        try:
            if opts.unsent:
                files, settled = asyncio.run(_replay(url, keys, unsent.find(opts.unsent)))
                print(f"{settled} outcomes recorded from {files} unsent file(s)")
            pages, failures = export(redis.Redis.from_url(url), keys, opts.output)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            self.exitcode = 1
            return
        except (redis.RedisError, OSError) as exc:
            print(f"Cannot export from Redis at {url} ({URL_SETTING}): {exc}", file=sys.stderr)
            self.exitcode = 1
            return
        print(f"{pages} pages and {failures} failures of crawl {crawl!r} written to {opts.output}")


async def _replay(url: str, keys: Keys, paths: list[Path]) -> tuple[int, int]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        return await unsent.replay_files(client, keys, paths)
    finally:
        await client.aclose()


def export(client: redis.Redis, keys: Keys, directory: str) -> tuple[int, int]:
    """Write the crawl's outcomes under ``directory``; return (pages, failures).
    Responses without a page (spiders that write none) are in neither file."""
    pages: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for record in _outcomes(client, keys):
        if "reason" in record:
            failures.append(record)
        elif "path" in record:
            pages.append(record)
    os.makedirs(directory, exist_ok=True)
    for name, records in ((MANIFEST_NAME, pages), (FAILURES_NAME, failures)):
        records.sort(key=lambda record: str(record.get("url")))
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        atomic_write(os.path.join(directory, name), lines.encode())
    return len(pages), len(failures)


def _outcomes(client: redis.Redis, keys: Keys) -> Iterator[dict[str, Any]]:
    for _, value in client.hscan_iter(keys.outcomes, count=SCAN_COUNT):
        record = json.loads(value)
        if isinstance(record, dict):
            yield record
