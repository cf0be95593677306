"""scrapy-asyncfetch: fast aiohttp fetching inside Scrapy.

Enable everything with one line in the project's settings::

    ADDONS = {"scrapy_asyncfetch.Addon": 300}

What a project touches is importable from here; modules whose names start with
an underscore are internal.
"""

from ._errors import CancelledAtCloseError, HostUnavailableError
from .addon import Addon
from .ledger import Ledger, LedgerDownloader, LedgerDownloaderMiddleware, LedgerSpiderMiddleware
from .middleware import AsyncFetchMiddleware
from .page import Page
from .pipelines import PageWriterPipeline

# The one place the version is written: setup.cfg reads it from here.
__version__ = "0.1.0"

__all__ = [
    "Addon",
    "AsyncFetchMiddleware",
    "CancelledAtCloseError",
    "HostUnavailableError",
    "Ledger",
    "LedgerDownloader",
    "LedgerDownloaderMiddleware",
    "LedgerSpiderMiddleware",
    "Page",
    "PageWriterPipeline",
    "__version__",
]
