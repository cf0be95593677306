"""Ending a crawl from inside it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

# The event loop keeps only weak references to tasks: these must not be
# collected before they have closed the spider.
_closing_tasks: set[asyncio.Task[None]] = set()


def close_crawl_soon(crawler: Crawler, reason: str) -> None:
    """Start closing the spider with ``reason``, without waiting for it; no-op
    when no spider is open."""
    engine = crawler.engine
    if engine is None or engine.spider is None:
        return
    task = asyncio.get_running_loop().create_task(engine.close_spider_async(reason=reason))
    _closing_tasks.add(task)
    task.add_done_callback(_closing_tasks.discard)
