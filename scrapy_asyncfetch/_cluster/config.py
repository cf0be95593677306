"""The cluster settings, read and validated once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._config import SettingsError, get_bool, get_float

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: The setting that turns cluster mode on, and scrapy-redis's name for it, accepted so
#: that a project moving from scrapy-redis keeps its settings.
URL_SETTING = "ASYNCFETCH_REDIS_URL"
SCRAPY_REDIS_URL_SETTING = "REDIS_URL"


def redis_url(settings: BaseSettings) -> str | None:
    """``ASYNCFETCH_REDIS_URL``, else ``REDIS_URL``; None: not a cluster crawl."""
    return settings.get(URL_SETTING) or settings.get(SCRAPY_REDIS_URL_SETTING) or None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    url: str
    #: Names the crawl in Redis, so several crawls can share one Redis.
    crawl: str
    #: Seconds a worker's leases last without renewal: how long the requests of a
    #: worker that died wait before another worker fetches them.
    lease: float
    #: Seconds the frontier must stay empty, nothing leased anywhere, before a worker
    #: finishes: other workers' callbacks may still add requests.
    grace: float
    #: Never finish on an empty frontier: wait for URLs pushed to ``<crawl>:start_urls``.
    keep_waiting: bool

    @classmethod
    def from_settings(cls, settings: BaseSettings, spider_name: str) -> ClusterConfig:
        url = redis_url(settings)
        if url is None:
            raise SettingsError(f"{URL_SETTING} is not set")
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"{URL_SETTING} must be a redis://, rediss:// or unix:// URL, got {url!r}"
            )
        crawl = str(settings.get("ASYNCFETCH_CLUSTER") or spider_name)
        if any(c in crawl for c in "{}\0") or not crawl.strip():
            raise SettingsError(f"ASYNCFETCH_CLUSTER must be a name without braces, got {crawl!r}")
        return cls(
            url=url,
            crawl=crawl,
            lease=get_float(settings, "ASYNCFETCH_CLUSTER_LEASE", minimum=1.0),
            grace=get_float(settings, "ASYNCFETCH_CLUSTER_GRACE"),
            keep_waiting=get_bool(settings, "ASYNCFETCH_CLUSTER_KEEP_WAITING"),
        )
