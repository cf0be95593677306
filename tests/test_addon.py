"""The add-on: what it enables and what it leaves alone."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from scrapy.exceptions import NotConfigured
from scrapy.settings import Settings
from scrapy.utils.misc import load_object

import scrapy_asyncfetch
from scrapy_asyncfetch import (
    Addon,
    AsyncFetchMiddleware,
    Ledger,
    LedgerDownloader,
    LedgerDownloaderMiddleware,
    LedgerSpiderMiddleware,
)
from scrapy_asyncfetch.addon import TUNING
from scrapy_asyncfetch.dupefilter import CompactDupeFilter
from scrapy_asyncfetch.startwindow import StartWindowMiddleware
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer
from tests.spiders import Collector


def applied(project: dict[str, Any]) -> Settings:
    settings = Settings()
    settings.setdict(project, priority="project")
    Addon().update_settings(settings)
    return settings


def components(settings: Settings, name: str) -> dict[type, int]:
    return {
        (load_object(k) if isinstance(k, str) else k): v for k, v in settings.getdict(name).items()
    }


def test_enables_the_middleware_after_every_request_preparing_one() -> None:
    settings = applied({})
    mws = components(settings, "DOWNLOADER_MIDDLEWARES")
    assert mws[AsyncFetchMiddleware] == 950
    base = settings.getdict("DOWNLOADER_MIDDLEWARES_BASE")
    assert all(order < 950 for order in base.values())
    assert mws[LedgerDownloaderMiddleware] < min(base.values())
    assert components(settings, "SPIDER_MIDDLEWARES")[LedgerSpiderMiddleware] > 50
    assert Ledger in components(settings, "EXTENSIONS")


def test_sets_the_downloader_unless_the_project_has_its_own() -> None:
    assert applied({}).get("DOWNLOADER") is LedgerDownloader
    own = "myproject.downloader.Downloader"
    assert applied({"DOWNLOADER": own}).get("DOWNLOADER") == own


def test_windows_start_outermost_of_the_spider_middlewares() -> None:
    settings = applied({})
    spider_mws = components(settings, "SPIDER_MIDDLEWARES")
    base = settings.getdict("SPIDER_MIDDLEWARES_BASE")
    assert spider_mws[StartWindowMiddleware] < min(base.values())


def test_sets_the_dupefilter_unless_the_project_has_its_own() -> None:
    assert applied({}).get("DUPEFILTER_CLASS") is CompactDupeFilter
    own = "myproject.dupefilters.Mine"
    assert applied({"DUPEFILTER_CLASS": own}).get("DUPEFILTER_CLASS") == own


def test_keeps_the_users_own_middleware_order() -> None:
    settings = applied(
        {"DOWNLOADER_MIDDLEWARES": {"scrapy_asyncfetch.middleware.AsyncFetchMiddleware": 800}}
    )
    assert components(settings, "DOWNLOADER_MIDDLEWARES")[AsyncFetchMiddleware] == 800


def test_tuning_never_overrides_the_project() -> None:
    assert applied({}).getint("CONCURRENT_ITEMS") == TUNING["CONCURRENT_ITEMS"]
    assert applied({"CONCURRENT_ITEMS": 100}).getint("CONCURRENT_ITEMS") == 100


def test_refuses_a_non_asyncio_reactor(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(NotConfigured):
        applied({"TWISTED_REACTOR": "twisted.internet.epollreactor.EPollReactor"})
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "TWISTED_REACTOR" in record.getMessage()


def test_accepts_running_without_a_reactor() -> None:
    settings = applied({"TWISTED_REACTOR_ENABLED": False, "TWISTED_REACTOR": None})
    assert AsyncFetchMiddleware in components(settings, "DOWNLOADER_MIDDLEWARES")


@asyncio_test
async def test_middleware_can_be_enabled_by_hand(mockserver: MockServer) -> None:
    crawler = await crawl(
        Collector,
        {
            "ADDONS": {},
            "DOWNLOADER_MIDDLEWARES": {"scrapy_asyncfetch.AsyncFetchMiddleware": 950},
        },
        requests=[mockserver.url("/echo")],
    )
    assert crawler.stats.get_value("asyncfetch/responses") == 1


@asyncio_test
async def test_disabled_by_setting(mockserver: MockServer) -> None:
    crawler = await crawl(
        Collector, {"ASYNCFETCH_ENABLED": False}, requests=[mockserver.url("/echo")]
    )
    assert crawler.stats.get_value("response_received_count") == 1
    assert crawler.stats.get_value("asyncfetch/responses") is None


def test_public_surface() -> None:
    """Users import from the package; internals stay in the underscored modules."""
    for name in scrapy_asyncfetch.__all__:
        assert getattr(scrapy_asyncfetch, name) is not None
    assert {"HostUnavailableError", "CancelledAtCloseError"} <= set(scrapy_asyncfetch.__all__)
    for internal in ("Limiter", "SlotPolicy", "SettingsError"):
        assert not hasattr(scrapy_asyncfetch, internal)
