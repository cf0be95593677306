"""The spider the cluster tests run as real ``scrapy runspider`` workers: fetches the URLs
of a file (the same file on every worker) and follows the links of each page once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response, TextResponse

from scrapy_asyncfetch import Page


class ClusterSpider(Spider):
    name = "cluster"
    custom_settings = {
        "ADDONS": {"scrapy_asyncfetch.Addon": 300},
        "ITEM_PIPELINES": {"scrapy_asyncfetch.PageWriterPipeline": 300},
        "TWISTED_REACTOR": "twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        "ASYNCFETCH_RESOLVER": "tests.resolver.LoopbackResolver",
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "ROBOTSTXT_OBEY": False,
        "LOG_LEVEL": "INFO",
        "CONCURRENT_REQUESTS": 16,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 2,
        "ASYNCFETCH_PROGRESS": "off",
    }

    def __init__(self, urls: str = "", follow: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.urls_file = urls
        self.follow = follow == "1"

    async def start(self) -> AsyncIterator[Request]:
        if self.urls_file:
            text = await asyncio.to_thread(Path(self.urls_file).read_text, encoding="utf-8")
            for line in text.splitlines():
                if line.strip():
                    yield Request(line.strip(), callback=self.parse)

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        yield Page.from_response(response)
        if self.follow and isinstance(response, TextResponse):
            for href in response.css("a::attr(href)").getall():
                yield Request(response.urljoin(href), callback=self.parse)
