"""The middleware's stats, counted locally on the hot path."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scrapy.statscollectors import StatsCollector


class StatsBuffer:
    """Counts and seconds added to Scrapy's stats collector in one go: the
    collector costs a few microseconds a call, several calls a request."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)  # waiting, backoff

    def flush(self, stats: StatsCollector) -> None:
        for key, count in self.counts.items():
            stats.inc_value(key, count)
        for key, seconds in self.seconds.items():
            stats.inc_value(key, seconds)  # type: ignore[arg-type]  # typed int, adds floats fine
        self.counts.clear()
        self.seconds.clear()
