"""Scrapy's per-request signals, sent only when something listens."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import StopDownload
from twisted.python.failure import Failure

from . import _compat

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

PER_REQUEST_SIGNALS = (
    signals.request_reached_downloader,
    signals.headers_received,
    signals.bytes_received,
    signals.response_downloaded,
    signals.request_left_downloader,
)


class SignalDispatch:
    """Sends the per-request signals the built-in download handlers send.

    Sending a signal nobody listens to still costs a dispatch per request (or
    per chunk), so which have receivers is noted by :meth:`refresh`, which the
    middleware calls every second and at spider open.
    """

    def __init__(self, crawler: Crawler) -> None:
        self._crawler = crawler
        self._listened: frozenset[object] = frozenset()
        self.refresh()

    def refresh(self) -> None:
        sender = self._crawler.signals.sender
        self._listened = frozenset(
            signal for signal in PER_REQUEST_SIGNALS if _compat.has_receivers(sender, signal)
        )

    def listened(self, signal: object) -> bool:
        return signal in self._listened

    def send(self, signal: object, **kwargs: Any) -> None:
        if signal in self._listened:
            self._crawler.signals.send_catch_log(
                signal=signal, spider=self._crawler.spider, **kwargs
            )

    def send_stoppable(
        self, signal: object, request: Request, **kwargs: Any
    ) -> StopDownload | None:
        """Send ``signal`` as the built-in handlers do; return the StopDownload a
        handler raised, if any."""
        if signal not in self._listened:
            return None
        results = self._crawler.signals.send_catch_log(
            signal=signal, request=request, spider=self._crawler.spider, **kwargs
        )
        for handler, result in results:
            if isinstance(result, Failure) and isinstance(result.value, StopDownload):
                # The built-in handlers' words, at their level.
                logger.debug(
                    "Download stopped for %s from signal handler %s",
                    request,
                    getattr(handler, "__qualname__", handler),
                )
                return result.value
        return None
