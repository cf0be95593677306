"""What one worker holds of the shared frontier: the domains it leases, the requests it
took and has not handed to Scrapy yet, and the ids it took and has no outcome for yet.

Plain Python, no Redis, no Scrapy: the scheduler glue decides what to ask Redis for
from what this says.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Want:
    """A leased domain to ask Redis about: ``want`` more of its requests; ``idle``:
    nothing of it is waiting or in flight here, so it is released if none is left."""

    domain: str
    want: int
    idle: bool


class LocalFrontier(Generic[T]):
    def __init__(self, batch: int) -> None:
        #: Requests taken per domain at once.
        self.batch = batch
        self.held: set[str] = set()
        #: id -> domain of every request taken and without an outcome yet.
        self.taken: dict[str, str] = {}
        self._load: Counter[str] = Counter()
        self._waiting: dict[str, deque[tuple[str, T]]] = {}
        # Domains with waiting requests, in turn: requests go out round-robin.
        self._turns: deque[str] = deque()
        #: Leased domains whose queue was found empty: not asked again until idle.
        self._drained: set[str] = set()
        #: Leased domains beyond this worker's fair share: not refilled, released once
        #: idle, for another worker to lease.
        self.yielding: set[str] = set()
        self.waiting = 0

    def __contains__(self, request_id: str) -> bool:
        return request_id in self.taken

    def add(self, domain: str, requests: list[tuple[str, T]]) -> None:
        """Requests of ``domain`` taken from Redis (it is leased to this worker)."""
        self.held.add(domain)
        self._drained.discard(domain)
        self.yielding.discard(domain)
        for request_id, request in requests:
            if self.taken.get(request_id) != domain:
                self._move(request_id, domain)
            self._put(domain, request_id, request)

    def put_back(self, domain: str, request_id: str, request: T) -> None:
        """A retry or redirect of a taken request, to a domain this worker leases: it
        stays here, under the same id."""
        self._move(request_id, domain)
        self._put(domain, request_id, request)

    def pop(self) -> tuple[str, T] | None:
        """The next request to hand to Scrapy, taking domains in turn."""
        while self._turns:
            domain = self._turns.popleft()
            queue = self._waiting.get(domain)
            if not queue:
                continue
            item = queue.popleft()
            self.waiting -= 1
            if queue:
                self._turns.append(domain)
            else:
                del self._waiting[domain]
            return item
        return None

    def done(self, request_id: str) -> str | None:
        """``request_id`` got its outcome here (or went back to Redis): return its domain."""
        domain = self.taken.pop(request_id, None)
        if domain is not None:
            self._load[domain] -= 1
            if not self._load[domain]:
                del self._load[domain]
        return domain

    def wants(self) -> list[Want]:
        """Leased domains running low, and idle ones (to release if nothing is left)."""
        found = []
        for domain in self.held:
            load = self._load.get(domain, 0)
            if not load:
                found.append(Want(domain, 0 if domain in self.yielding else self.batch, True))
            elif (
                domain not in self._drained
                and domain not in self.yielding
                and len(self._waiting.get(domain, ())) < (self.batch + 1) // 2
            ):
                found.append(Want(domain, self.batch - len(self._waiting.get(domain, ())), False))
        return found

    def keep_at_most(self, share: int) -> None:
        """Lease no more than ``share`` domains: let the excess go, those with the least
        left here first (they drain soonest), keeping the ones already let go."""
        self.yielding &= self.held
        excess = len(self.held) - share - len(self.yielding)
        if excess < 0:
            # The share grew: take back the ones with the most left here.
            for domain in sorted(self.yielding, key=self._left)[excess:]:
                self.yielding.discard(domain)
        elif excess:
            staying = sorted(self.held - self.yielding, key=self._left)
            self.yielding.update(staying[:excess])

    def _left(self, domain: str) -> int:
        return self._load.get(domain, 0)

    def drained(self, domain: str) -> None:
        """A refill of ``domain`` found nothing: wait until it is idle to ask again."""
        self._drained.add(domain)

    def release(self, domain: str) -> list[str]:
        """``domain`` is no longer leased here (released, or the lease was reaped):
        forget it; return the ids of its requests that were waiting."""
        self.held.discard(domain)
        self._drained.discard(domain)
        self.yielding.discard(domain)
        queue = self._waiting.pop(domain, deque())
        self.waiting -= len(queue)
        dropped = [request_id for request_id, _ in queue]
        for request_id in dropped:
            self.done(request_id)
        return dropped

    def drain_all(self) -> list[tuple[str, T]]:
        """Every waiting request, leaving none (the crawl is closing)."""
        items = [item for queue in self._waiting.values() for item in queue]
        self._waiting.clear()
        self._turns.clear()
        self.waiting = 0
        return items

    def _move(self, request_id: str, domain: str) -> None:
        self.done(request_id)
        self.taken[request_id] = domain
        self._load[domain] += 1

    def _put(self, domain: str, request_id: str, request: T) -> None:
        queue = self._waiting.get(domain)
        if queue is None:
            queue = self._waiting[domain] = deque()
            self._turns.append(domain)
        queue.append((request_id, request))
        self.waiting += 1
