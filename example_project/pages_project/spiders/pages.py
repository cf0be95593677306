"""The ``pages`` spider: fetch a list of URLs (or the built-in demo site) and write every page.

Arguments (all optional; scrapyd passes them the same way with ``-d name=value``):

- ``urls=FILE``: one URL per line; blank lines and ``#`` comments are skipped.
- ``start_urls=URL1,URL2``: URLs given inline.
- ``follow=1``: also follow links, on the same host only; ``depth=N`` hops (default 1).

With neither ``urls`` nor ``start_urls`` the spider serves the demo site on 127.0.0.1..4 and
crawls it, following links two hops deep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterable
from typing import Any

from scrapy import Request, Spider, signals
from scrapy.crawler import Crawler
from scrapy.exceptions import CloseSpider
from scrapy.http import Response, TextResponse

from pages_project.demo_site import DemoSite
from pages_project.urls import (
    UrlLine,
    count_url_lines,
    iter_url_file,
    same_host,
    split_url_list,
    url_problem,
)
from scrapy_asyncfetch import Ledger, Page

logger = logging.getLogger(__name__)

#: The finish_reason of a crawl whose ``-a urls=FILE`` cannot be read.
URLS_FILE_UNREADABLE = "urls_file_unreadable"
DEMO_DEPTH = 2
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


class PagesSpider(Spider):
    name = "pages"

    def __init__(
        self,
        urls: str | None = None,
        start_urls: str | None = None,
        follow: str = "",
        depth: str = "1",
        **kwargs: Any,
    ) -> None:
        # Every argument arrives as a string, from the command line and from scrapyd alike;
        # scrapyd adds `_job`, which the base class keeps as an attribute like any other.
        super().__init__(**kwargs)
        self.urls_file: str | None = urls or None
        self.inline_urls: list[UrlLine] = split_url_list(start_urls or "")
        self.demo = self.urls_file is None and not self.inline_urls
        self.follow = self.demo or follow.strip().lower() in TRUE_WORDS
        try:
            self.max_depth = DEMO_DEPTH if self.demo else int(depth)
        except ValueError:
            raise ValueError(f"-a depth must be a whole number, not {depth!r}") from None
        self.demo_site: DemoSite | None = None
        #: How many inputs the crawl has, when known before it ends: the progress display's total.
        self.progress_total: int | None = None
        self.pages_dir: str | None = None
        self._reported_invalid: set[str] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> PagesSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        # Absolute, for the closing message: the setting may be relative to the crawl's cwd.
        pages_dir = crawler.settings.get("ASYNCFETCH_PAGES_DIR")
        spider.pages_dir = os.path.abspath(pages_dir) if pages_dir else None
        crawler.signals.connect(spider._on_spider_closed, signal=signals.spider_closed)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        if self.demo:
            # Started here, not in __init__: the asyncio loop only runs once the crawl does.
            self.demo_site = DemoSite()
            await self.demo_site.start()
            for url in self.demo_site.start_urls:
                yield Request(url, callback=self.parse)
            return
        if not self.follow:
            self.progress_total = len(self.inline_urls)
            if self.urls_file is not None:
                with contextlib.suppress(OSError):  # reported below, where it is read
                    self.progress_total += await asyncio.to_thread(count_url_lines, self.urls_file)
        for url in self._valid_urls(self.inline_urls, "-a start_urls"):
            yield Request(url, callback=self.parse)
        if self.urls_file is not None:
            try:
                for url in self._valid_urls(iter_url_file(self.urls_file), self.urls_file):
                    yield Request(url, callback=self.parse)
            except (OSError, UnicodeError) as exc:
                # One clear line, no traceback: the file is the user's to fix, not a bug.
                logger.error("Cannot read the URL file %s: %s", self.urls_file, exc)
                raise CloseSpider(URLS_FILE_UNREADABLE) from None

    async def parse(self, response: Response) -> AsyncIterator[Page | Request]:
        yield Page.from_response(response)
        if not self.follow or not isinstance(response, TextResponse):
            return
        if response.meta.get("depth", 0) >= self.max_depth:
            return
        for href in response.css("a::attr(href)").getall():
            url = response.urljoin(href)
            if url_problem(url) is None and same_host(url, response.url):
                yield Request(url, callback=self.parse)

    def _valid_urls(self, lines: Iterable[UrlLine], source: str) -> Iterable[str]:
        """The URLs of `lines`; each distinct invalid one is warned about and recorded once."""
        for line in lines:
            if line.problem is None:
                yield line.text
                continue
            if line.text in self._reported_invalid:
                continue
            self._reported_invalid.add(line.text)
            where = f"line {line.line_number} of {source}" if line.line_number else source
            logger.warning("Skipping invalid URL %r (%s): %s", line.text, where, line.problem)
            ledger = self.crawler.get_extension(Ledger)
            if ledger is not None:
                ledger.record_failure(
                    url=line.text, reason="InvalidURL", message=f"{line.problem} ({where})"
                )

    async def _on_spider_closed(self, reason: str) -> None:
        # Logged before stopping the demo site: handlers of this signal run concurrently, and
        # the ledger's summary, logged by one of them, should be the last word on the crawl.
        if self.pages_dir is not None:
            manifest = os.path.join(self.pages_dir, "manifest.jsonl")
            logger.info("Crawl %s: pages under %s, index in %s", reason, self.pages_dir, manifest)
        if self.demo_site is not None:
            await self.demo_site.stop()
