"""``scrapy asyncfetch-export -o DIR``: a cluster crawl's outcomes, from Redis, as the
``manifest.jsonl`` and ``failures.jsonl`` one process would have written (each page
record also names the worker that wrote it, and its path is under that worker's
ASYNCFETCH_PAGES_DIR). A command, not the crawl: the blocking Redis client is fine here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import redis
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from .._failures import FAILURES_NAME
from ..storage import MANIFEST_NAME, atomic_write
from .config import URL_SETTING, redis_url
from .keys import Keys

if TYPE_CHECKING:
    from collections.abc import Iterator

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

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        assert self.settings is not None
        if not opts.output:
            raise UsageError("-o DIR is required")
        url = redis_url(self.settings)
        crawl = self.settings.get("ASYNCFETCH_CLUSTER")
        if not url or not crawl:
            raise UsageError(f"set {URL_SETTING} and ASYNCFETCH_CLUSTER (-s NAME=VALUE)")
        try:
            pages, failures = export(redis.Redis.from_url(url), Keys(crawl), opts.output)
        except (redis.RedisError, OSError) as exc:
            print(f"Cannot export from Redis at {url} ({URL_SETTING}): {exc}", file=sys.stderr)
            self.exitcode = 1
            return
        print(f"{pages} pages and {failures} failures of crawl {crawl!r} written to {opts.output}")


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
