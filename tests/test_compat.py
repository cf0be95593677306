"""The Scrapy/aiohttp internals the plugin relies on: all present here, and a
missing one refuses the crawl with one ERROR naming it."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from scrapy.core.downloader import Downloader

from scrapy_asyncfetch import _compat
from scrapy_asyncfetch._config import INCOMPATIBLE_REASON
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer
from tests.spiders import Collector


def test_every_internal_is_there() -> None:
    _compat.check()


MOVED = {
    "Downloader._get_slot": (Downloader, "_get_slot"),
    "aiohttp.ClientResponse.start(connection)": (aiohttp.ClientResponse, "start"),
}


@pytest.mark.parametrize("named", list(MOVED))
@asyncio_test
async def test_a_moved_internal_refuses_the_crawl_naming_it(
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    mockserver: MockServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As if a Scrapy or aiohttp release had renamed it.
    monkeypatch.setattr(*MOVED[named], None)
    crawler = await crawl(Collector, requests=[mockserver.url("/page/0")])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert f"scrapy-asyncfetch needs {named}" in errors[0]
    assert crawler.stats.get_value("finish_reason") == INCOMPATIBLE_REASON
    assert mockserver.host_stats(1)["count"] == 0
