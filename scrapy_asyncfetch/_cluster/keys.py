"""The Redis key names of one crawl.

Every key of a crawl shares the hash tag ``{crawl}``, so on a Redis Cluster they all live
in one slot and every Lua script may touch any of them. The one exception is the
scrapy-redis compatible ``<crawl>:start_urls`` list, named as scrapy-redis names it so
that the scripts that feed it keep working; it is read on its own, never from a script.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    crawl: str

    @property
    def prefix(self) -> str:
        return f"asyncfetch:{{{self.crawl}}}:"

    @property
    def requests(self) -> str:
        """Hash: request id -> ``domain NUL payload``, for every request queued or in flight.
        Scripts get it as KEYS[1] and derive the other names from it."""
        return self.prefix + "req"

    @property
    def outcomes(self) -> str:
        """Hash: request id -> its outcome (a manifest or failures record, JSON)."""
        return self.prefix + "outcomes"

    @property
    def stats(self) -> str:
        """Hash: cluster-wide counters."""
        return self.prefix + "stats"

    @property
    def workers(self) -> str:
        """Sorted set: worker id -> when its lease expires (Redis time, ms)."""
        return self.prefix + "workers"

    @property
    def ready(self) -> str:
        """Sorted set: unleased domain with queued requests -> earliest next start (ms)."""
        return self.prefix + "ready"

    @property
    def seen(self) -> str:
        """Set: fingerprints of every request that entered the crawl."""
        return self.prefix + "seen"

    def queue(self, domain: str) -> str:
        return self.prefix + "q:" + domain

    def in_flight(self, worker: str) -> str:
        return self.prefix + "inflight:" + worker

    @property
    def start_urls(self) -> str:
        """scrapy-redis's ``<name>:start_urls``: URLs (or data) pushed while the crawl runs."""
        return f"{self.crawl}:start_urls"
