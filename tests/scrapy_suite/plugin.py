"""Pytest plugin that forces the add-on on for every crawler Scrapy's tests create.

Load it into a run of Scrapy's own test suite with ``-p plugin`` and this directory on
``PYTHONPATH`` (run.py does that). It is not loaded as ``tests.scrapy_suite.plugin`` because
Scrapy's test suite has a ``tests`` package of its own.

``Settings()`` rereads :mod:`scrapy.settings.default_settings` each time it is built, so setting
``ADDONS`` there, at import, reaches every crawler (``get_crawler()``, ``CrawlerRunner``,
``CrawlerProcess``) a test builds, at the ``default`` priority: a test that sets ``ADDONS``
itself replaces it, as it would replace a project's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import scrapy
from scrapy.settings import default_settings
from scrapy.utils.misc import load_object

ADDON = "scrapy_asyncfetch.Addon"
ADDON_PRIORITY = 300
MIDDLEWARE = "scrapy_asyncfetch.AsyncFetchMiddleware"
#: run.py looks for this in the add-on pass's output, to be sure the plugin took effect.
HEADER_PREFIX = "scrapy-asyncfetch forced on:"

default_settings.ADDONS = {ADDON: ADDON_PRIORITY}

_header: list[str] = []


def _order_of(components: Mapping[Any, Any], path: str) -> Any:
    wanted = load_object(path)
    for key, order in components.items():
        if (load_object(key) if isinstance(key, str) else key) is wanted:
            return order
    return None


def check_crawler_settings() -> str:
    """Build a crawler as Scrapy's tests do and check that the add-on reached its settings.

    Return a one-line description; raise ``RuntimeError`` if the add-on is not in effect.
    """
    # Imported late: scrapy.utils.test imports scrapy.crawler, which must not be imported
    # before pytest-twisted installs the reactor.
    from scrapy.utils.test import get_crawler  # noqa: PLC0415

    crawler = get_crawler()
    addons = crawler.settings.getdict("ADDONS")
    addon_priority = _order_of(addons, ADDON)
    order = _order_of(crawler.settings.getwithbase("DOWNLOADER_MIDDLEWARES"), MIDDLEWARE)
    if addon_priority is None or order is None:
        raise RuntimeError(
            f"the add-on did not take effect: ADDONS={addons!r}, "
            f"{MIDDLEWARE} in DOWNLOADER_MIDDLEWARES at {order!r}"
        )
    return (
        f"{HEADER_PREFIX} ADDONS has {ADDON} at {addon_priority}, "
        f"DOWNLOADER_MIDDLEWARES has {MIDDLEWARE} at {order}, "
        f"DOWNLOADER={crawler.settings['DOWNLOADER']!r}; Scrapy {scrapy.__version__} from "
        f"{Path(scrapy.__file__).parent}"
    )


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # After every pytest_configure, so pytest-twisted has installed the reactor that
    # get_crawler() expects.
    try:
        _header.append(check_crawler_settings())
    except RuntimeError as exc:
        pytest.exit(f"scrapy-asyncfetch suite plugin: {exc}", returncode=3)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return list(_header)
