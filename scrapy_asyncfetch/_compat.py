"""Every reach into Scrapy's, PyDispatcher's and aiohttp's internals, in one place.

Each is used through one function here, with the version it was checked
against. :func:`check` verifies them all when the middleware is built, so a
Scrapy or aiohttp that moved one refuses the crawl with one ERROR naming it,
instead of misbehaving later.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
from pydispatch import dispatcher
from scrapy.core.downloader import Downloader, Slot
from scrapy.core.engine import _Slot as _EngineSlot
from scrapy.dupefilters import RFPDupeFilter

if TYPE_CHECKING:
    import ssl

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

#: Checked against Scrapy 2.19.0, aiohttp 3.14 and PyDispatcher 2.0.7.
CHECKED_AGAINST = "Scrapy 2.19.0, aiohttp 3.14, PyDispatcher 2.0.7"

#: Attributes of a download slot the middleware keeps true for Scrapy's own
#: readers (DownloaderAwarePriorityQueue, AutoThrottle, the slot GC).
_SLOT_ATTRIBUTES = ("active", "transferring", "lastseen", "concurrency", "delay", "jitter")


class IncompatibleError(RuntimeError):
    """An internal the plugin relies on is missing or has changed."""


def check() -> None:
    """Raise :class:`IncompatibleError` naming the first internal that moved."""
    slot = Slot(1, 0.0, 0.0)
    for name in _SLOT_ATTRIBUTES:
        _require(hasattr(slot, name), f"scrapy.core.downloader.Slot().{name}")
    _require(callable(getattr(Downloader, "_get_slot", None)), "Downloader._get_slot")
    _require("slots" in inspect.getsource(Downloader.__init__), "Downloader().slots")
    _require(_has_parameters(Downloader.fetch, "request"), "Downloader.fetch(request)")
    _require(callable(getattr(dispatcher, "getAllReceivers", None)), "dispatcher.getAllReceivers")
    _require(
        "self.nextcall" in inspect.getsource(_EngineSlot.__init__), "ExecutionEngine._slot.nextcall"
    )
    _require(
        _has_parameters(aiohttp.ClientResponse.start, "connection"),
        "aiohttp.ClientResponse.start(connection)",
    )
    _require(
        isinstance(getattr(RFPDupeFilter(), "_fingerprints", None), set),
        "RFPDupeFilter()._fingerprints",
    )
    try:
        from scrapy.utils.ssl import _make_ssl_context  # noqa: F401, PLC0415
    except ImportError:
        _require(False, "scrapy.utils.ssl._make_ssl_context")


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise IncompatibleError(
            f"scrapy-asyncfetch needs {what}, which this Scrapy/aiohttp does not have "
            f"(checked against {CHECKED_AGAINST})"
        )


def _has_parameters(function: Callable[..., Any], *names: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in names)


# -- the downloader's slots (scrapy/core/downloader/__init__.py, 2.19.0) --------


def slot_of(downloader: Downloader, request: Request) -> tuple[str, Slot]:
    """The request's download slot key and slot, built as Scrapy builds it
    (from DOWNLOAD_SLOTS and its defaults) on first use."""
    key = downloader.get_slot_key(request)
    slot = downloader.slots.get(key)
    if slot is None:
        # Only then: _get_slot's deprecation-checking wrapper costs more than a lookup.
        key, slot = downloader._get_slot(request)
    return key, slot


def slot_entered(slot: Slot, request: Request) -> None:
    """Count ``request`` in its slot's ``active`` set, as Downloader._enqueue_request does."""
    slot.active.add(request)


def slot_left(slot: Slot, request: Request) -> None:
    slot.active.discard(request)


def transfer_started(slot: Slot, request: Request) -> float:
    """Count ``request`` as transferring, as Downloader._download does; return
    the start time it records as the slot's ``lastseen`` (time.monotonic)."""
    slot.transferring.add(request)
    slot.lastseen = started = time.monotonic()
    return started


def transfer_ended(slot: Slot, request: Request) -> None:
    slot.transferring.discard(request)


def slot_limits(slot: Slot) -> tuple[int, float, float]:
    """The slot's concurrency, delay (AutoThrottle moves it) and jitter."""
    return slot.concurrency, slot.delay, slot.jitter


def slot_named(downloader: Downloader, key: str) -> Slot | None:
    """The download slot ``key``, if the downloader has made it yet (``Downloader.slots``)."""
    return downloader.slots.get(key)


def set_slot_delay(slot: Slot, delay: float) -> None:
    """Set the delay AutoThrottle moves (``Slot.delay``), as AutoThrottle sets it."""
    slot.delay = delay


def slots_in_flight(downloader: Downloader) -> Iterator[tuple[str, int]]:
    """Each download slot's key and how many of its requests are transferring
    (``Downloader.slots``, ``Slot.transferring``, 2.19.0)."""
    for key, slot in list(downloader.slots.items()):
        yield key, len(slot.transferring)


def engine_closing(crawler: Crawler) -> bool:
    """Has the crawl started to close? Scrapy sends no signal for that: a stop
    (SIGINT, SIGTERM, scrapyd cancel) clears ``crawler.crawling``, any close
    sets the engine slot's ``closing`` (ExecutionEngine._slot, 2.19.0)."""
    if not crawler.crawling:
        return True
    slot = getattr(crawler.engine, "_slot", None)
    return getattr(slot, "closing", None) is not None


def wake_engine(crawler: Crawler) -> None:
    """Have the engine ask the scheduler for requests now, not at its next 5 s heartbeat
    (``ExecutionEngine._slot.nextcall``, 2.19.0): for a scheduler filled from outside
    the crawl (the cluster's frontier)."""
    slot = getattr(crawler.engine, "_slot", None)
    if slot is not None:
        slot.nextcall.schedule()


def mark_seen(crawler: Crawler, request: Request) -> None:
    """Add ``request`` to the scheduler's duplicate filter (Scheduler.df, 2.19.0),
    so a later copy of it is filtered; a scheduler without one is left alone."""
    dupefilter = getattr(crawler.engine.scheduler, "df", None)
    if dupefilter is not None:
        dupefilter.request_seen(request)


def replace_dupefilter_fingerprints(
    dupefilter: RFPDupeFilter, factory: Callable[[Any], Any]
) -> None:
    """Swap the set of fingerprints an RFPDupeFilter tests and adds to
    (``RFPDupeFilter._fingerprints``, 2.19.0) for ``factory(old set)``. Left alone if
    it moved: :func:`check` has then refused the crawl already."""
    fingerprints = getattr(dupefilter, "_fingerprints", None)
    if isinstance(fingerprints, set):
        dupefilter._fingerprints = factory(fingerprints)


# -- TLS and signals -----------------------------------------------------------


def make_ssl_context(settings: BaseSettings) -> ssl.SSLContext:
    """The TLS context Scrapy's built-in handlers use (scrapy.utils.ssl, 2.19.0)."""
    from scrapy.utils.ssl import _make_ssl_context  # noqa: PLC0415

    return _make_ssl_context(settings)


def has_receivers(sender: Any, signal: object) -> bool:
    """Does ``signal`` have any receiver for ``sender``? (PyDispatcher 2.0.7)"""
    return any(True for _ in dispatcher.getAllReceivers(sender, signal))
