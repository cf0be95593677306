"""The three site mixes: which hosts exist, how each behaves, and the URL file crawled.

Shared by the server process (which needs each host's behaviour) and the orchestrator
(which writes the URL file and knows which URLs are good). Everything is derived from the
mix name and ``scale``, so both sides build the same mix independently.

Paths: ``/p/{i}`` is a good page; ``/bad/{kind}/{j}`` always misbehaves as ``kind`` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Behaviour(StrEnum):
    HEALTHY = "healthy"
    RATE_LIMITED = "rate_limited"
    CAPACITY_LIMITED = "capacity_limited"


class BadKind(StrEnum):
    """What a bad URL of the ``faults`` mix does, every time it is requested."""

    TOO_MANY = "429"  # 429 with Retry-After: 1
    UNAVAILABLE = "503"  # 503 without Retry-After
    ERROR = "500"
    STALL = "stall"  # never answers
    RESET = "reset"  # the connection is reset (RST) instead of an answer
    GZIP_BOMB = "gzipbomb"  # Content-Encoding: gzip, decompresses far past DOWNLOAD_MAXSIZE
    REDIRECT_LOOP = "redirect"  # 302 to a new URL of the same chain, forever


@dataclass(frozen=True)
class HostSpec:
    name: str
    address: str
    behaviour: Behaviour
    pages: int
    latency: tuple[float, float] = (0.03, 0.03)  # uniform between the two, seconds
    rate: float = 0.0  # RATE_LIMITED: tokens per second
    burst: int = 0  # RATE_LIMITED: bucket size
    capacity: int = 0  # CAPACITY_LIMITED: requests served at once
    down_for: float = 0.0  # refuse connections for this long after the crawl's first request
    bad_urls: int = 0

    def describe(self) -> str:
        lo, hi = self.latency
        latency = f"{lo * 1000:.0f} ms" if lo == hi else f"{lo * 1000:.0f}-{hi * 1000:.0f} ms"
        parts = [f"{self.pages:,} pages"]
        if self.behaviour is Behaviour.RATE_LIMITED:
            parts.append(f"{self.rate:g} req/s (bucket {self.burst}), beyond: 429 Retry-After 1")
        elif self.behaviour is Behaviour.CAPACITY_LIMITED:
            parts.append(f"{self.capacity} at a time, beyond: 503 at once")
            latency += f" x (1 + in service / {self.capacity})"
        if self.down_for:
            parts.append(f"refuses connections for the first {self.down_for:g} s")
        if self.bad_urls:
            parts.append(f"{self.bad_urls} bad URLs")
        return f"{self.name} ({self.address}): " + ", ".join([*parts, latency])


@dataclass(frozen=True)
class Mix:
    name: str
    summary: str
    hosts: tuple[HostSpec, ...]
    settings: dict[str, str] = field(default_factory=dict)
    arrangements: tuple[str, ...] = ("interleaved",)
    notes: tuple[str, ...] = ()

    def host(self, name: str) -> HostSpec:
        return next(h for h in self.hosts if h.name == name)


@dataclass(frozen=True)
class UrlEntry:
    url: str
    host: str
    good: bool
    kind: str  # "page" or a BadKind value


MIX_NAMES = ("faults", "limited", "outage")
#: Arrangements of the bad URLs in the faults mix: evenly spread, or all at the end.
FAULT_ARRANGEMENTS = ("spread", "end")
#: The limited mix's ideal: host A's pages at its rate.
LIMITED_RATE = 20.0


def _count(n: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(n * scale))


def _faults(scale: float) -> Mix:
    bad_total = _count(40, scale, minimum=len(BadKind))
    hosts = tuple(
        HostSpec(
            name=name,
            address=f"127.0.0.{21 + i}",
            behaviour=Behaviour.HEALTHY,
            pages=_count(1000, scale),
            latency=(0.02, 0.05),
            # Bad URL j goes to host j % 4: hosts get about the same number.
            bad_urls=len(range(i, bad_total, 4)),
        )
        for i, name in enumerate("FGHI")
    )
    return Mix(
        name="faults",
        summary="a few broken URLs among healthy pages",
        hosts=hosts,
        # Stalls end at the timeout; the gzip bomb passes DOWNLOAD_MAXSIZE once decompressed.
        settings={"DOWNLOAD_TIMEOUT": "5", "DOWNLOAD_MAXSIZE": "10000000"},
        arrangements=FAULT_ARRANGEMENTS,
        notes=(
            "Bad URL j is on host j % 4 and of kind j % 7, each kind every time: 429 with "
            "Retry-After: 1; 503 without Retry-After; 500; stall (never answers); reset (TCP "
            "RST instead of an answer); gzip bomb (a 50 KB gzip body that decompresses to "
            "50 MB); redirect chain (302 to a new URL every hop, forever).",
            "Arrangements: `spread`, the bad URLs evenly among the good ones in the URL file; "
            "`end`, all after them.",
        ),
    )


def _limited(scale: float) -> Mix:
    pages = _count(400, scale)
    hosts = (
        HostSpec("A", "127.0.0.31", Behaviour.RATE_LIMITED, pages, rate=LIMITED_RATE, burst=20),
        HostSpec("B", "127.0.0.32", Behaviour.CAPACITY_LIMITED, pages, (0.05, 0.05), capacity=6),
        HostSpec("C", "127.0.0.33", Behaviour.HEALTHY, pages),
    )
    return Mix(
        name="limited",
        summary="rate- and capacity-limited hosts next to a healthy one",
        hosts=hosts,
        settings={"CONCURRENT_REQUESTS": "32", "CONCURRENT_REQUESTS_PER_DOMAIN": "16"},
    )


def _outage(scale: float) -> Mix:
    pages = _count(300, scale)
    hosts = (
        HostSpec("D", "127.0.0.41", Behaviour.HEALTHY, pages, down_for=3.0),
        HostSpec("E", "127.0.0.42", Behaviour.HEALTHY, pages),
    )
    note = (
        "D's socket is bound but not listening (connections refused) until 3 s after the "
        "crawl's first request to any host."
    )
    return Mix("outage", "one host down for the first 3 s", hosts, notes=(note,))


def build_mix(name: str, scale: float = 1.0) -> Mix:
    builders = {"faults": _faults, "limited": _limited, "outage": _outage}
    return builders[name](scale)


def limited_ideal_seconds(scale: float = 1.0) -> float:
    """Host A's pages at its allowed rate: the shortest a polite crawl of the limited mix takes."""
    return build_mix("limited", scale).host("A").pages / LIMITED_RATE


def _good_urls(mix: Mix, port: int) -> list[UrlEntry]:
    """Round robin over the hosts: A0 B0 C0 A1 B1 C1 ..."""
    entries = []
    for i in range(max(h.pages for h in mix.hosts)):
        for host in mix.hosts:
            if i < host.pages:
                url = f"http://{host.address}:{port}/p/{i}"
                entries.append(UrlEntry(url, host.name, good=True, kind="page"))
    return entries


def _bad_urls(mix: Mix, port: int) -> list[UrlEntry]:
    kinds = list(BadKind)
    total = sum(h.bad_urls for h in mix.hosts)
    entries = []
    for j in range(total):
        host = mix.hosts[j % len(mix.hosts)]
        kind = kinds[j % len(kinds)]
        url = f"http://{host.address}:{port}/bad/{kind}/{j}"
        entries.append(UrlEntry(url, host.name, good=False, kind=kind.value))
    return entries


def url_entries(mix: Mix, port: int, arrangement: str) -> list[UrlEntry]:
    """The URL file's lines, in order. ``spread``: bad URLs evenly among the good ones;
    ``end``: all after them."""
    good = _good_urls(mix, port)
    bad = _bad_urls(mix, port)
    if arrangement == "end" or not bad:
        return good + bad
    entries = list(good)
    step = len(good) / (len(bad) + 1)
    # From the back, so earlier insertion points keep their index.
    for j in reversed(range(len(bad))):
        entries.insert(round((j + 1) * step), bad[j])
    return entries
