"""Spiders the tests crawl with."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from scrapy import Request, Spider
from scrapy.http import Response
from twisted.python.failure import Failure

from scrapy_asyncfetch import Page


class Collector(Spider):
    """Requests the given requests (or URLs); keeps every response and failure."""

    name = "collector"

    def __init__(
        self,
        requests: Iterable[Request | str] = (),
        errbacks: bool = True,
        dont_filter: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.to_request = list(requests)
        self.errbacks = errbacks
        self.dont_filter = dont_filter
        self.responses: list[Response] = []
        self.failures: list[Failure] = []
        #: The crawl's stats, for tests that set them here once it ended.
        self.stats: dict[str, Any] = {}

    async def start(self) -> AsyncIterator[Request]:
        for item in self.to_request:
            request = Request(item) if isinstance(item, str) else item
            yield request.replace(
                callback=request.callback or self.parse,
                errback=request.errback or (self.on_error if self.errbacks else None),
                dont_filter=self.dont_filter,
            )

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        self.responses.append(response)
        for _ in ():
            yield

    def on_error(self, failure: Failure) -> None:
        self.failures.append(failure)

    def failure_types(self) -> list[type[BaseException]]:
        return [f.type for f in self.failures]  # type: ignore[misc]


class PageSpider(Collector):
    """Turns every response into a :class:`~scrapy_asyncfetch.Page` item."""

    name = "pages"

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        yield Page.from_response(response)
