"""The crawl variants compared: the same spider and settings, plus these ``-s`` overrides.

Add a variant by adding an entry to ``VARIANTS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    settings: dict[str, str] = field(default_factory=dict)
    #: Whether the add-on is on (its targets are checked, its stats reported).
    addon: bool = True


# The project's settings.py enables the add-on; ``ADDONS={}`` on the command line replaces
# that with nothing (checked in every run's log: "Enabled addons: []"). ITEM_PIPELINES stays,
# so every variant writes its pages with PageWriterPipeline and is counted from its manifest.
_NO_ADDON = {"ADDONS": "{}"}

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("stock", "Scrapy alone (add-on off)", _NO_ADDON, addon=False),
        Variant(
            "autothrottle",
            "Scrapy alone + AutoThrottle (its defaults)",
            {**_NO_ADDON, "AUTOTHROTTLE_ENABLED": "True"},
            addon=False,
        ),
        Variant("addon", "the project as it is: add-on on, its defaults"),
        Variant(
            "addon-noadaptive",
            "add-on, ASYNCFETCH_ADAPTIVE_CONCURRENCY=False",
            {"ASYNCFETCH_ADAPTIVE_CONCURRENCY": "False"},
        ),
        Variant(
            "addon-nobackoff",
            "add-on, ASYNCFETCH_BACKOFF_ENABLED=False",
            {"ASYNCFETCH_BACKOFF_ENABLED": "False"},
        ),
    )
}
DEFAULT_VARIANTS = ("stock", "autothrottle", "addon", "addon-noadaptive")
