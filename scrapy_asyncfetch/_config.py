"""Read and validate the ``ASYNCFETCH_*`` settings (and the Scrapy settings they
default to) once, at start-up, with one clear message naming a bad setting."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import CloseSpider

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: The finish_reason of a crawl refused for a bad setting.
BAD_SETTING_REASON = "asyncfetch_bad_setting"
#: The finish_reason of a crawl refused because Scrapy or aiohttp moved an internal.
INCOMPATIBLE_REASON = "asyncfetch_incompatible"


#: Defaults of the plugin's own settings; the Scrapy settings they fall back to
#: when unset are named in :meth:`FetchConfig.from_settings`.
DEFAULTS: dict[str, Any] = {
    "ASYNCFETCH_ENABLED": True,
    "ASYNCFETCH_SHUTDOWN_TIMEOUT": 2.0,
    "ASYNCFETCH_CONNECT_TIMEOUT": 10.0,
    "ASYNCFETCH_BACKOFF_ENABLED": True,
    "ASYNCFETCH_BACKOFF_MAX": 120.0,
    "ASYNCFETCH_BACKOFF_THRESHOLD": 0.15,
    "ASYNCFETCH_BACKOFF_WINDOW": 20,
    "ASYNCFETCH_ADAPTIVE_CONCURRENCY": True,
    "ASYNCFETCH_BREAKER_THRESHOLD": 3,
    "ASYNCFETCH_BREAKER_COOLDOWN": 30.0,
    "ASYNCFETCH_BREAKER_HOLD": 10.0,
    "ASYNCFETCH_PAGES_GZIP": False,
    "ASYNCFETCH_WRITE_CONCURRENCY": 16,
    "ASYNCFETCH_START_WINDOW": 10_000,
    "ASYNCFETCH_WARC_MAX_SIZE": 1 << 30,
    "ASYNCFETCH_PROGRESS": "auto",
    "ASYNCFETCH_REPORT": True,
    "ASYNCFETCH_CLUSTER_LEASE": 30.0,
    "ASYNCFETCH_CLUSTER_GRACE": 5.0,
    "ASYNCFETCH_CLUSTER_KEEP_WAITING": False,
}


class SettingsError(ValueError):
    """A setting has a value the plugin cannot use; the message names it."""


class RefusedComponent:
    """Stands in for a component that cannot work (a setting is invalid, an
    internal it needs has moved): says so in one line, and closes the spider
    before it crawls anything.

    (An exception from ``from_crawler`` would end the crawl with a traceback;
    Scrapy honours a CloseSpider raised while the spider opens.)
    """

    def __init__(
        self, crawler: Crawler, error: Exception, reason: str = BAD_SETTING_REASON
    ) -> None:
        logger.error("%s; not crawling (finish reason %s)", error, reason)
        self.reason = reason
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)

    def _spider_opened(self) -> None:
        raise CloseSpider(self.reason)


def _number(
    settings: BaseSettings, name: str, kind: type[int] | type[float], minimum: float
) -> Any:
    default = DEFAULTS.get(name, 0)
    raw = settings.get(name, default)
    try:
        value = settings.getint(name, default) if kind is int else settings.getfloat(name, default)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if kind is int and isinstance(raw, float) and not raw.is_integer():
        raise SettingsError(f"{name} must be a whole number, got {raw!r}")
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum:g}, got {raw!r}")
    return value


def get_int(settings: BaseSettings, name: str, minimum: int = 0) -> int:
    """``settings.getint(name)``, refusing non-numbers and values below ``minimum``."""
    value: int = _number(settings, name, int, minimum)
    return value


def get_float(settings: BaseSettings, name: str, minimum: float = 0.0) -> float:
    """``settings.getfloat(name)``, refusing non-numbers and values below ``minimum``."""
    value: float = _number(settings, name, float, minimum)
    return value


def get_bool(settings: BaseSettings, name: str) -> bool:
    """``settings.getbool(name)`` with the plugin's default, refusing non-booleans."""
    try:
        return settings.getbool(name, DEFAULTS.get(name, False))
    except ValueError:
        raise SettingsError(f"{name} must be True or False, got {settings.get(name)!r}") from None


def get_choice(settings: BaseSettings, name: str, choices: tuple[str, ...]) -> str:
    """One of *choices* (the first is the default), case-insensitive."""
    value = str(settings.get(name, DEFAULTS.get(name, choices[0]))).strip().lower()
    if value not in choices:
        raise SettingsError(
            f"{name} must be one of {', '.join(choices)}, got {settings.get(name)!r}"
        )
    return value


def get_share(settings: BaseSettings, name: str) -> float:
    """A fraction in (0, 1]."""
    value = get_float(settings, name)
    if not 0 < value <= 1:
        raise SettingsError(f"{name} must be a fraction in (0, 1], got {settings.get(name)!r}")
    return value


def get_optional_int(settings: BaseSettings, name: str, minimum: int = 0) -> int | None:
    return None if settings.get(name) is None else get_int(settings, name, minimum)


def get_optional_float(settings: BaseSettings, name: str, minimum: float = 0.0) -> float | None:
    return None if settings.get(name) is None else get_float(settings, name, minimum)


def bind_host(bind: str | tuple[str, int] | list[Any] | None) -> str | None:
    """The host of a bind address (``DOWNLOAD_BIND_ADDRESS``, ``meta["bindaddress"]``),
    given as a host or as Scrapy's ``(host, port)``; the port is the OS's choice."""
    if isinstance(bind, tuple | list):
        return str(bind[0])
    return bind or None


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """What the middleware needs from the settings, validated."""

    concurrent_requests: int
    concurrent_requests_per_domain: int | None
    download_delay: float | None
    shutdown_timeout: float
    connect_timeout: float
    download_timeout: float
    maxsize: int
    warnsize: int
    fail_on_dataloss: bool
    bind_address: str | None
    backoff_enabled: bool
    backoff_max: float
    backoff_threshold: float
    backoff_window: int
    adaptive_concurrency: bool
    breaker_threshold: int
    breaker_cooldown: float
    breaker_hold: float
    resolver: str | None
    #: Whether the client keeps each exchange as sent and received, for the WARC writer.
    keep_exchange: bool

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> FetchConfig:
        if settings.get("ASYNCFETCH_BACKOFF_DEFAULT") is not None:
            logger.warning(
                "ASYNCFETCH_BACKOFF_DEFAULT is no longer used: a 429/503 without Retry-After "
                "is retried as RetryMiddleware does, and its domain slowed only on evidence "
                "(see ASYNCFETCH_BACKOFF_THRESHOLD)"
            )
        total = settings.get("ASYNCFETCH_CONCURRENT_REQUESTS")
        return cls(
            concurrent_requests=get_int(
                settings,
                "CONCURRENT_REQUESTS" if total is None else "ASYNCFETCH_CONCURRENT_REQUESTS",
            ),
            concurrent_requests_per_domain=get_optional_int(
                settings, "ASYNCFETCH_CONCURRENT_REQUESTS_PER_DOMAIN", minimum=1
            ),
            download_delay=get_optional_float(settings, "ASYNCFETCH_DOWNLOAD_DELAY"),
            shutdown_timeout=get_float(settings, "ASYNCFETCH_SHUTDOWN_TIMEOUT"),
            connect_timeout=get_float(settings, "ASYNCFETCH_CONNECT_TIMEOUT"),
            download_timeout=get_float(settings, "DOWNLOAD_TIMEOUT"),
            maxsize=get_int(settings, "DOWNLOAD_MAXSIZE"),
            warnsize=get_int(settings, "DOWNLOAD_WARNSIZE"),
            fail_on_dataloss=settings.getbool("DOWNLOAD_FAIL_ON_DATALOSS"),
            bind_address=bind_host(settings.get("DOWNLOAD_BIND_ADDRESS")),
            backoff_enabled=get_bool(settings, "ASYNCFETCH_BACKOFF_ENABLED"),
            backoff_max=get_float(settings, "ASYNCFETCH_BACKOFF_MAX"),
            backoff_threshold=get_share(settings, "ASYNCFETCH_BACKOFF_THRESHOLD"),
            # Two 429/503 answers are the least evidence a window must be able to hold.
            backoff_window=get_int(settings, "ASYNCFETCH_BACKOFF_WINDOW", minimum=2),
            adaptive_concurrency=get_bool(settings, "ASYNCFETCH_ADAPTIVE_CONCURRENCY"),
            breaker_threshold=get_int(settings, "ASYNCFETCH_BREAKER_THRESHOLD"),
            breaker_cooldown=get_float(settings, "ASYNCFETCH_BREAKER_COOLDOWN"),
            breaker_hold=get_float(settings, "ASYNCFETCH_BREAKER_HOLD"),
            resolver=settings.get("ASYNCFETCH_RESOLVER") or None,
            keep_exchange=bool(settings.get("ASYNCFETCH_WARC_DIR")),
        )
