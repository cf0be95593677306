"""Log each expected network failure once, in one line, without a traceback.

Scrapy's scraper logs every download error that reaches a spider without an
errback as "Error downloading <request>" with the full traceback. For a
timeout or a refused connection the traceback says nothing the exception's
class and message do not, and thousands of them bury the log. And when
RetryMiddleware gave up on the request, it has already logged the failure
("Gave up retrying ...") at ERROR: the scraper's line then says it again.
"""

from __future__ import annotations

import logging

from .errors import SCRAPY_DOWNLOAD_ERRORS, CancelledAtCloseError, UnexpectedFetchError

_SCRAPER_LOGGER = "scrapy.core.scraper"


class ConciseDownloadErrors(logging.Filter):
    """Rewrite records of expected download errors as ``msg: Class: message``;
    lower to DEBUG those RetryMiddleware already reported, and to INFO those of
    requests cancelled by a stop."""

    def __init__(self, retried: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        #: What RetryMiddleware retries (and reports when it gives up); () if disabled.
        self.retried = retried

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, SCRAPY_DOWNLOAD_ERRORS) and not isinstance(exc, UnexpectedFetchError):
            request = record.args.get("request") if isinstance(record.args, dict) else None
            # Formatted here, once: URLs may hold "%" that must not be re-read.
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            if isinstance(exc, CancelledAtCloseError):
                # Expected when a crawl is stopped: the middleware says once how
                # many it cancelled, and the ledger records each.
                _relevel(record, logging.INFO)
            elif isinstance(exc, self.retried) and not getattr(request, "meta", {}).get(
                "dont_retry"
            ):
                _relevel(record, logging.DEBUG)
        return True

    def install(self) -> None:
        logging.getLogger(_SCRAPER_LOGGER).addFilter(self)

    def remove(self) -> None:
        logging.getLogger(_SCRAPER_LOGGER).removeFilter(self)


def _relevel(record: logging.LogRecord, level: int) -> None:
    record.levelno, record.levelname = level, logging.getLevelName(level)
