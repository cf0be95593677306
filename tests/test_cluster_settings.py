"""Which crawls are cluster crawls, and the cluster settings' validation."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy.settings import Settings

from scrapy_asyncfetch import Addon
from scrapy_asyncfetch._cluster.config import ClusterConfig
from scrapy_asyncfetch._config import SettingsError
from scrapy_asyncfetch.addon import CLUSTER_SCHEDULER


def applied(project: dict[str, Any]) -> Settings:
    settings = Settings()
    settings.setdict(project, priority="project")
    Addon().update_settings(settings)
    return settings


def test_a_redis_url_makes_a_cluster_crawl() -> None:
    default = Settings().get("SCHEDULER")
    assert applied({}).get("SCHEDULER") == default
    url = "redis://127.0.0.1:6379/0"
    assert applied({"ASYNCFETCH_REDIS_URL": url}).get("SCHEDULER") == CLUSTER_SCHEDULER
    # scrapy-redis's setting is accepted, for projects moving over.
    assert applied({"REDIS_URL": url}).get("SCHEDULER") == CLUSTER_SCHEDULER
    # A project's own scheduler wins.
    own = "scrapy_redis.scheduler.Scheduler"
    assert applied({"REDIS_URL": url, "SCHEDULER": own}).get("SCHEDULER") == own


def test_cluster_settings_are_read_once_and_checked() -> None:
    settings = Settings({"REDIS_URL": "redis://a/0", "ASYNCFETCH_REDIS_URL": "redis://b/1"})
    config = ClusterConfig.from_settings(settings, "pages")
    assert (config.url, config.crawl, config.lease, config.grace) == ("redis://b/1", "pages", 30, 5)
    assert not config.keep_waiting


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"ASYNCFETCH_REDIS_URL": "localhost:6379"}, "ASYNCFETCH_REDIS_URL"),
        ({"ASYNCFETCH_CLUSTER": "a{b}"}, "ASYNCFETCH_CLUSTER"),
        ({"ASYNCFETCH_CLUSTER_LEASE": "0.5"}, "ASYNCFETCH_CLUSTER_LEASE"),
        ({"ASYNCFETCH_CLUSTER_GRACE": "soon"}, "ASYNCFETCH_CLUSTER_GRACE"),
        ({"ASYNCFETCH_CLUSTER_KEEP_WAITING": "maybe"}, "ASYNCFETCH_CLUSTER_KEEP_WAITING"),
    ],
)
def test_a_bad_cluster_setting_is_named(values: dict[str, str], named: str) -> None:
    settings = Settings({"ASYNCFETCH_REDIS_URL": "redis://127.0.0.1/0", **values})
    with pytest.raises(SettingsError, match=named):
        ClusterConfig.from_settings(settings, "pages")
