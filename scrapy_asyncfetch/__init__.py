"""scrapy-asyncfetch: fast aiohttp fetching inside Scrapy.

Enable everything with one line in the project's settings::

    ADDONS = {"scrapy_asyncfetch.Addon": 300}
"""

from .addon import Addon
from .config import SettingsError
from .ledger import Ledger, LedgerDownloader, LedgerDownloaderMiddleware, LedgerSpiderMiddleware
from .limits import Limiter, SlotPolicy
from .middleware import AsyncFetchMiddleware
from .page import Page
from .pipelines import PageWriterPipeline

__all__ = [
    "Addon",
    "AsyncFetchMiddleware",
    "Ledger",
    "LedgerDownloader",
    "LedgerDownloaderMiddleware",
    "LedgerSpiderMiddleware",
    "Limiter",
    "Page",
    "PageWriterPipeline",
    "SettingsError",
    "SlotPolicy",
]
