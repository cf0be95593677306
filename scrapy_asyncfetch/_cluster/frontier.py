"""The shared frontier in Redis, through ``redis.asyncio``: one Lua call per round trip.

No Scrapy here: requests are opaque payloads, domains are download slot keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import lua
from .keys import Keys

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis


@dataclass(frozen=True, slots=True)
class Push:
    """A request entering the frontier; ``replace``: a retry or redirect of a request
    this worker took, which takes its place (same id). A redirect has a fingerprint and
    may be a duplicate, like any new request; a retry (dont_filter) has none."""

    id: str
    fingerprint: str  # "" skips the duplicate filter (dont_filter)
    domain: str
    payload: bytes
    replace: bool = False


@dataclass(frozen=True, slots=True)
class Settle:
    """The outcome of a request (``kind``: page or failure)."""

    id: str
    kind: str
    record: str


@dataclass(frozen=True, slots=True)
class Refill:
    """A leased domain: want up to ``want`` more of its requests; ``idle`` (nothing of it
    buffered or in flight) releases it when none is left, storing ``state`` and when it
    may next start (``remaining`` seconds from now)."""

    domain: str
    want: int
    idle: bool = False
    state: str = ""
    remaining: float = 0.0


@dataclass(slots=True)
class SyncBatch:
    settle: list[Settle] = field(default_factory=list)
    push: list[Push] = field(default_factory=list)
    refill: list[Refill] = field(default_factory=list)
    #: How many new domains to lease, and how many requests of each to take.
    take: int = 0
    batch: int = 1

    def __bool__(self) -> bool:
        return bool(self.settle or self.push or self.refill or self.take)


@dataclass(frozen=True, slots=True)
class Group:
    """Requests taken from one domain, with the domain's stored state when newly leased."""

    domain: str
    state: str
    requests: list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class SyncResult:
    duplicates: list[str]
    #: Domains this worker thought it leased but no longer does (its lease was reaped).
    lost: list[str]
    released: list[str]
    groups: list[Group]
    #: Requests queued or in flight anywhere in the crawl.
    outstanding: int
    #: Seconds until the next domain becomes leasable (None: none queued).
    next_ready: float | None
    settled: int
    #: This worker had been reaped: everything it had was given back.
    reaped: bool
    #: Domains this worker may lease now: its fair share among the live workers.
    share: int


@dataclass(frozen=True, slots=True)
class KeepResult:
    requeued: int
    reaped_workers: int
    was_reaped: bool
    outstanding: int


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Frontier:
    def __init__(self, redis: Redis, keys: Keys, worker: str, lease: float) -> None:
        self.redis = redis
        self.keys = keys
        self.worker = worker
        self.lease_ms = int(lease * 1000)
        self._sync = redis.register_script(lua.SYNC)
        self._keep = redis.register_script(lua.KEEP)
        #: Round trips made, for stats and the benchmark.
        self.calls = 0

    async def sync(self, batch: SyncBatch) -> SyncResult:
        args: list[Any] = [
            self.worker,
            self.lease_ms,
            len(batch.settle),
            len(batch.push),
            len(batch.refill),
            batch.take,
            batch.batch,
        ]
        for s in batch.settle:
            args += [s.id, s.kind, s.record]
        for p in batch.push:
            args += [p.id, p.fingerprint, p.domain, p.payload, "1" if p.replace else "0"]
        for r in batch.refill:
            args += [r.domain, r.want, "1" if r.idle else "0", r.state, _ms(r.remaining)]
        self.calls += 1
        reply = await self._sync(keys=[self.keys.requests], args=args)
        duplicates, lost, released, groups, outstanding, to_next, settled, reaped, share = reply
        return SyncResult(
            duplicates=[_text(d) for d in duplicates],
            lost=[_text(d) for d in lost],
            released=[_text(d) for d in released],
            groups=[
                Group(
                    _text(g[0]),
                    _text(g[1]),
                    [(_text(g[n]), g[n + 1]) for n in range(2, len(g), 2)],
                )
                for g in groups
            ],
            outstanding=int(outstanding),
            next_ready=None if int(to_next) < 0 else int(to_next) / 1000,
            settled=int(settled),
            reaped=bool(reaped),
            share=int(share),
        )

    async def keep(
        self, states: Sequence[tuple[str, str, float]] = (), *, leaving: bool = False
    ) -> KeepResult:
        """Renew this worker's lease and reap expired ones; or, ``leaving``, give back all
        this worker holds. ``states``: (domain, state, remaining seconds) to store."""
        args: list[Any] = [self.worker, self.lease_ms, "1" if leaving else "0"]
        for domain, state, remaining in states:
            args += [domain, state, _ms(remaining)]
        self.calls += 1
        requeued, reaped, was_reaped, outstanding = await self._keep(
            keys=[self.keys.requests], args=args
        )
        return KeepResult(int(requeued), int(reaped), bool(was_reaped), int(outstanding))

    async def cluster_stats(self) -> dict[str, int]:
        self.calls += 1
        raw: dict[bytes, bytes] = await self.redis.hgetall(self.keys.stats)  # type: ignore[assignment]
        return {_text(key): int(value) for key, value in raw.items()}

    async def pop_start_urls(self, count: int) -> list[bytes]:
        self.calls += 1
        popped: list[bytes] | None = await self.redis.lpop(self.keys.start_urls, count)  # type: ignore[assignment]
        return popped or []

    async def start_urls_waiting(self) -> int:
        self.calls += 1
        return int(await self.redis.llen(self.keys.start_urls))


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))
