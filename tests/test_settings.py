"""Bad settings stop the crawl at start-up with one message naming the setting."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from scrapy.settings import Settings

from scrapy_asyncfetch._config import BAD_SETTING_REASON, FetchConfig, SettingsError, bind_host
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer
from tests.spiders import PageSpider


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("ASYNCFETCH_CONCURRENT_REQUESTS", -1, "must be >= 0"),
        ("ASYNCFETCH_CONCURRENT_REQUESTS_PER_DOMAIN", 0, "must be >= 1"),
        ("ASYNCFETCH_DOWNLOAD_DELAY", "soon", "must be a number"),
        ("ASYNCFETCH_SHUTDOWN_TIMEOUT", -2.5, "must be >= 0"),
        ("ASYNCFETCH_BREAKER_THRESHOLD", 2.5, "must be a whole number"),
        ("ASYNCFETCH_BACKOFF_ENABLED", "maybe", "must be True or False"),
        ("ASYNCFETCH_BACKOFF_THRESHOLD", 1.5, "must be a fraction in (0, 1]"),
        ("ASYNCFETCH_BACKOFF_THRESHOLD", 0, "must be a fraction in (0, 1]"),
        ("ASYNCFETCH_BACKOFF_WINDOW", 1, "must be >= 2"),
        ("ASYNCFETCH_ADAPTIVE_CONCURRENCY", "perhaps", "must be True or False"),
        ("ASYNCFETCH_BREAKER_HOLD", -1, "must be >= 0"),
        ("ASYNCFETCH_WRITE_CONCURRENCY", 0, "must be >= 1"),
    ],
)
@asyncio_test
async def test_bad_setting_is_one_clear_error(  # noqa: PLR0917 - parameters and fixtures
    setting: str,
    value: Any,
    message: str,
    mockserver: MockServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    crawler = await crawl(
        PageSpider,
        {
            setting: value,
            "ASYNCFETCH_PAGES_DIR": str(tmp_path),
            "ITEM_PIPELINES": {"scrapy_asyncfetch.PageWriterPipeline": 300},
            "LOG_LEVEL": "INFO",
        },
        requests=[mockserver.url("/page/0")],
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].getMessage().startswith(f"{setting} {message}")
    assert errors[0].exc_info is None
    assert crawler.stats.get_value("finish_reason") == BAD_SETTING_REASON
    # Refused before crawling anything.
    assert mockserver.host_stats(1)["count"] == 0


def test_good_settings_are_read_once_into_a_config() -> None:
    config = FetchConfig.from_settings(
        Settings({"CONCURRENT_REQUESTS": 32, "ASYNCFETCH_DOWNLOAD_DELAY": "0.25"})
    )
    assert config.concurrent_requests == 32
    assert config.download_delay == 0.25
    assert config.concurrent_requests_per_domain is None
    with pytest.raises(SettingsError, match="ASYNCFETCH_CONCURRENT_REQUESTS must be"):
        FetchConfig.from_settings(Settings({"ASYNCFETCH_CONCURRENT_REQUESTS": "x"}))


def test_a_removed_setting_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    FetchConfig.from_settings(Settings({"ASYNCFETCH_BACKOFF_DEFAULT": 5.0}))
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("ASYNCFETCH_BACKOFF_DEFAULT is no longer used")


@pytest.mark.parametrize(
    ("bind", "host"),
    [(None, None), ("", None), ("127.0.0.2", "127.0.0.2"), (("127.0.0.2", 0), "127.0.0.2")],
)
def test_bind_address_forms(bind: Any, host: str | None) -> None:
    assert bind_host(bind) == host
    settings = Settings({"DOWNLOAD_BIND_ADDRESS": bind})
    assert FetchConfig.from_settings(settings).bind_address == host
