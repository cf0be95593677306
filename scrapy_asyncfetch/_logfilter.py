"""Log each expected network failure in one line, without a traceback.

Scrapy's scraper logs every download error that reaches a spider without an
errback as "Error downloading <request>" with the full traceback. For a
timeout or a refused connection the traceback says nothing the exception's
class and message do not, and thousands of them bury the log. The record keeps
Scrapy's logger and level, so ``log_count/ERROR`` and log-based monitoring
count what they count with stock Scrapy.
"""

from __future__ import annotations

import logging

from ._errors import SCRAPY_DOWNLOAD_ERRORS, CancelledAtCloseError, UnexpectedFetchError

_SCRAPER_LOGGER = "scrapy.core.scraper"


class ConciseDownloadErrors(logging.Filter):
    """Rewrite records of expected download errors as ``msg: Class: message``;
    lower to INFO those of requests cancelled by a stop (an outcome of the
    add-on's bounded shutdown, which stock Scrapy does not have)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SCRAPY_DOWNLOAD_ERRORS) and not isinstance(exc, UnexpectedFetchError):
            # Formatted here, once: URLs may hold "%" that must not be re-read.
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            if isinstance(exc, CancelledAtCloseError):
                # Expected when a crawl is stopped: the middleware says once how
                # many it cancelled, and the ledger records each.
                record.levelno, record.levelname = logging.INFO, "INFO"
        return True

    def install(self) -> None:
        logging.getLogger(_SCRAPER_LOGGER).addFilter(self)

    def remove(self) -> None:
        logging.getLogger(_SCRAPER_LOGGER).removeFilter(self)
