"""The one-line add-on: ``ADDONS = {"scrapy_asyncfetch.Addon": 300}``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from scrapy.exceptions import NotConfigured
from scrapy.extensions.logstats import LogStats

from ._cluster.config import redis_url
from .dupefilter import CompactDupeFilter
from .ledger import Ledger, LedgerDownloader, LedgerDownloaderMiddleware, LedgerSpiderMiddleware
from .middleware import AsyncFetchMiddleware
from .progress import Progress
from .report import CrawlReport
from .startwindow import StartWindowMiddleware
from .warc import WarcWriter

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

_ASYNCIO_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
#: After every built-in middleware that prepares a request (cookies, auth,
#: user agent, proxy, default headers) and after HttpCacheMiddleware (900), so
#: a cache hit never reaches the network.
MIDDLEWARE_ORDER = 950
#: Outermost, so its process_exception runs after every other one (RetryMiddleware
#: included) and sees only final failures.
LEDGER_DOWNLOADER_ORDER = 10
#: Above HttpErrorMiddleware (50): exceptions travel from high to low orders,
#: and HttpErrorMiddleware silences the HttpError it raised.
LEDGER_SPIDER_ORDER = 60
#: Outermost of the spider middlewares, next to the engine: it holds back what every
#: other middleware's process_start lets through.
START_WINDOW_ORDER = 0
#: The scheduler of cluster mode, by name: redis is imported only by a cluster crawl.
CLUSTER_SCHEDULER = "scrapy_asyncfetch._cluster.scheduler.ClusterScheduler"
#: Settings the add-on changes from Scrapy's defaults, and only where the
#: project (or command line, or spider) has not set them itself. See the
#: README for the measurements behind each value.
TUNING: dict[str, object] = {
    "CONCURRENT_ITEMS": 4,
}


class Addon:
    """Enable the middleware and the failure ledger; never override what the
    user configured."""

    def update_settings(self, settings: BaseSettings) -> None:
        # TWISTED_REACTOR_ENABLED = False runs Scrapy on a plain asyncio loop: fine too.
        reactor = settings.get("TWISTED_REACTOR")
        if settings.getbool("TWISTED_REACTOR_ENABLED", True) and reactor != _ASYNCIO_REACTOR:
            logger.error(
                "scrapy-asyncfetch is disabled: it needs TWISTED_REACTOR = %r, got %r",
                _ASYNCIO_REACTOR,
                reactor,
            )
            raise NotConfigured
        settings.setdefault_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", AsyncFetchMiddleware, MIDDLEWARE_ORDER
        )
        settings.setdefault_in_component_priority_dict("EXTENSIONS", Ledger, 0)
        settings.setdefault_in_component_priority_dict("EXTENSIONS", Progress, 0)
        # Stays out of the crawl unless there is a directory to write it to.
        settings.setdefault_in_component_priority_dict("EXTENSIONS", CrawlReport, 0)
        if str(settings.get("ASYNCFETCH_PROGRESS", "auto")).strip().lower() != "off":
            # Progress stands in for LogStats' "Crawled N pages" line; a project that
            # configured LogStats itself keeps it.
            settings.setdefault_in_component_priority_dict("EXTENSIONS", LogStats, None)
        # Stays out of the crawl (NotConfigured) unless ASYNCFETCH_WARC_DIR is set.
        settings.setdefault_in_component_priority_dict("EXTENSIONS", WarcWriter, 0)
        settings.setdefault_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", LedgerDownloaderMiddleware, LEDGER_DOWNLOADER_ORDER
        )
        settings.setdefault_in_component_priority_dict(
            "SPIDER_MIDDLEWARES", LedgerSpiderMiddleware, LEDGER_SPIDER_ORDER
        )
        settings.setdefault_in_component_priority_dict(
            "SPIDER_MIDDLEWARES", StartWindowMiddleware, START_WINDOW_ORDER
        )
        # At "addon" priority: a project's own DOWNLOADER wins (the ledger then
        # records process_response exceptions at close, without their class).
        settings.set("DOWNLOADER", LedgerDownloader, priority="addon")
        # Likewise: a project's own DUPEFILTER_CLASS wins.
        settings.set("DUPEFILTER_CLASS", CompactDupeFilter, priority="addon")
        if redis_url(settings):
            # Cluster mode. At "addon" priority, like DOWNLOADER: a project that set its
            # own SCHEDULER (scrapy-redis's, say) keeps it, and then crawls as before.
            settings.set("SCHEDULER", CLUSTER_SCHEDULER, priority="addon")
        for name, value in TUNING.items():
            settings.set(name, value, priority="addon")
