"""Settings for the four Scrapy runners, so that they differ only in what is being compared.

* ``stock`` (runner 4): what a user sets for concurrency C, everything else default.
* ``tuned`` (runner 5): stock plus every setting the add-on changes, except those that
  enable the middleware itself. They are read from the add-on at run time, never copied by
  hand, so runner 5 vs runner 7 always compares the middleware, not settings.
* ``aiohttp-handler`` (runner 6): tuned plus Scrapy's experimental aiohttp download handler.
* ``addon`` (runner 7): stock plus ``ADDONS = {"scrapy_asyncfetch.Addon": 300}``.
"""

from __future__ import annotations

from typing import Any

VARIANTS = ("stock", "tuned", "aiohttp-handler", "addon")
ADDON_PATH = "scrapy_asyncfetch.Addon"
PLUGIN_PACKAGE = "scrapy_asyncfetch"
AIOHTTP_HANDLER = "scrapy.core.downloader.handlers._aiohttp.AiohttpDownloadHandler"

# Settings through which the add-on switches its middleware on. They are what runner 7 has
# and runner 5 must not have.
ENABLING_SETTINGS = frozenset({"DOWNLOADER_MIDDLEWARES"})


def stock_settings(concurrency: int) -> dict[str, Any]:
    """What a user would write for concurrency C (runner 4, and the base of the others)."""
    return {
        "CONCURRENT_REQUESTS": concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency,
        "LOG_LEVEL": "INFO",
    }


def _is_plugin_component(key: object) -> bool:
    name = key if isinstance(key, str) else getattr(key, "__module__", "")
    return name == PLUGIN_PACKAGE or name.startswith(PLUGIN_PACKAGE + ".")


def _plain(value: Any) -> Any:
    """A comparable, copyable form of a setting value: component dicts become plain dicts.

    Not ``BaseSettings.copy_to_dict()``: it turns class keys into strings like
    ``"<class 'x.Y'>"``, which Scrapy could no longer load and we could not recognise.
    """
    from scrapy.settings import BaseSettings  # noqa: PLC0415 - keep the module import light

    return {k: value[k] for k in value} if isinstance(value, BaseSettings) else value


def _component_name(key: object) -> str:
    if isinstance(key, str):
        return key
    return f"{getattr(key, '__module__', '?')}.{getattr(key, '__qualname__', repr(key))}"


def describe(value: Any) -> Any:
    """JSON-friendly form of a setting value, for results (class keys become dotted paths)."""
    if isinstance(value, dict):
        return {_component_name(k): describe(v) for k, v in value.items()}
    if isinstance(value, type):
        return _component_name(value)
    return value


def addon_tuning(base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply the add-on to a copy of ``base`` and diff.

    Returns ``(tuning, excluded)``: ``tuning`` is every setting the add-on changed (final
    values), minus ``ENABLING_SETTINGS`` and minus any component of the plugin package itself,
    whether in a component dict (e.g. an extension of ours) or the whole value (e.g.
    ``DOWNLOADER``); ``excluded`` is what was left out, for the record.
    """
    from scrapy.settings import Settings  # noqa: PLC0415

    from scrapy_asyncfetch import Addon  # noqa: PLC0415 - may not be importable yet

    before = Settings(base)  # "project" priority, exactly like the runners' own settings
    after = Settings(base)
    if hasattr(Addon, "update_pre_crawler_settings"):
        Addon.update_pre_crawler_settings(after)
    Addon().update_settings(after)

    tuning: dict[str, Any] = {}
    excluded: dict[str, Any] = {}
    for name in sorted(set(before) | set(after)):
        # [] rather than .get(): .get() warns about deprecated names such as DNS_RESOLVER.
        old, new = _plain(before[name]), _plain(after[name])
        if old == new:
            continue
        if name in ENABLING_SETTINGS:
            excluded[name] = new
            continue
        if isinstance(new, dict):
            ours = {k: v for k, v in new.items() if _is_plugin_component(k)}
            if ours:
                excluded[name] = ours
                new = {k: v for k, v in new.items() if k not in ours}
                if new == old:
                    continue
        elif _is_plugin_component(new):  # a dotted path or a class, e.g. DOWNLOADER
            excluded[name] = new
            continue
        tuning[name] = new
    return tuning, excluded


def variant_settings(variant: str, concurrency: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Settings for one runner variant, plus metadata describing how they were obtained."""
    settings = stock_settings(concurrency)
    meta: dict[str, Any] = {}
    if variant in ("tuned", "aiohttp-handler"):
        tuning, excluded = addon_tuning(settings)
        settings.update(tuning)
        meta = {"addon_tuning": describe(tuning), "addon_excluded": describe(excluded)}
    if variant == "aiohttp-handler":
        handlers = dict(settings.get("DOWNLOAD_HANDLERS") or {})
        handlers.update({"http": AIOHTTP_HANDLER, "https": AIOHTTP_HANDLER})
        settings["DOWNLOAD_HANDLERS"] = handlers
    if variant == "addon":
        settings["ADDONS"] = {ADDON_PATH: 300}
    if variant not in VARIANTS:
        raise ValueError(f"unknown Scrapy variant {variant!r}; expected one of {VARIANTS}")
    return settings, meta
