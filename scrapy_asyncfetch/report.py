"""The crawl report: what happened per host, in ``report.json`` and ``report.html``.

Written at close beside the manifest (``ASYNCFETCH_PAGES_DIR``, or ``ASYNCFETCH_REPORT_DIR``).
Per host: responses, pages, failures by reason, latency p50/p95, seconds slowed by the
politeness engine, seconds unreachable and breaker opens, and the most requests it had in
flight at once; over time: pages per second and mean latency. Responses and pages are counted
from Scrapy's signals; failures are read back from the ledger's file at close; the in-flight,
slowed and unreachable figures are sampled four times a second (a breaker stays open at least a
second, so none is missed). Nothing here runs per request beyond two counter updates.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.httpobj import urlparse_cached

from . import _compat
from ._config import get_bool
from .ledger import Ledger
from .middleware import AsyncFetchMiddleware
from .page import Page
from .storage import atomic_write, iter_json_lines

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
#: Seconds between two looks at the downloader's slots and the held domains.
SAMPLE_INTERVAL = 0.25
#: Hosts shown in the HTML table and latency chart (the busiest); report.json has them all.
HTML_HOSTS = 50


class LatencyHistogram:
    """Latencies in geometric buckets 5% wide: percentiles within 2.5%, in constant memory."""

    _BASE = 1e-4  # 0.1 ms: the first bucket's upper edge
    _RATIO = 1.05

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.total = 0

    def add(self, seconds: float) -> None:
        bucket = (
            0 if seconds <= self._BASE else math.ceil(math.log(seconds / self._BASE, self._RATIO))
        )
        self.counts[bucket] += 1
        self.total += 1

    def percentile(self, share: float) -> float | None:
        """The latency under which *share* of the samples fall (a bucket's upper edge)."""
        if not self.total:
            return None
        rank = share * self.total
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return self._BASE * self._RATIO**bucket
        raise AssertionError("unreachable: the counts add up to the total")


@dataclass
class HostStats:
    """One host's figures (plain Python)."""

    #: Requests sent (retries included), as the middleware counts them; without it, responses.
    requests: int | None = None
    responses: int = 0
    pages: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    busiest: int = 0
    slowed_seconds: float = 0.0
    unreachable_seconds: float = 0.0
    breaker_opens: int = 0

    def as_dict(self) -> dict[str, Any]:
        p50, p95 = self.latency.percentile(0.5), self.latency.percentile(0.95)
        return {
            "requests": self.responses if self.requests is None else self.requests,
            "responses": self.responses,
            "pages": self.pages,
            "failures": sum(self.failures.values()),
            "failures_by_reason": dict(self.failures.most_common()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "latency_p50": None if p50 is None else round(p50, 4),
            "latency_p95": None if p95 is None else round(p95, 4),
            "busiest_in_flight": self.busiest,
            "slowed_seconds": round(self.slowed_seconds, 2),
            "unreachable_seconds": round(self.unreachable_seconds, 2),
            "breaker_opens": self.breaker_opens,
        }


class Timeline:
    """Per-second pages and latency since the crawl opened (plain Python)."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.pages: list[int] = []
        self.latency_sum: list[float] = []
        self.latency_count: list[int] = []

    def _second(self, now: float) -> int:
        second = max(int(now - self.start), 0)
        while len(self.pages) <= second:
            self.pages.append(0)
            self.latency_sum.append(0.0)
            self.latency_count.append(0)
        return second

    def page(self, now: float) -> None:
        self.pages[self._second(now)] += 1

    def latency(self, now: float, seconds: float) -> None:
        second = self._second(now)
        self.latency_sum[second] += seconds
        self.latency_count[second] += 1

    def mean_latency(self) -> list[float | None]:
        return [
            total / count if count else None
            for total, count in zip(self.latency_sum, self.latency_count, strict=True)
        ]


class CrawlReport:
    """The extension (enabled by the add-on; ``ASYNCFETCH_REPORT = False`` turns it off)."""

    def __init__(self, crawler: Crawler, directory: str) -> None:
        self.crawler = crawler
        self.directory = directory
        self.hosts: dict[str, HostStats] = {}
        self.timeline = Timeline(time.monotonic())
        self.started = datetime.now(UTC)
        self._sampler: asyncio.Task[None] | None = None
        self._held: dict[str, str] = {}  # host -> "slowed" or "unreachable", at the last look
        for handler, signal in (
            (self._opened, signals.spider_opened),
            (self._response, signals.response_received),
            (self._item, signals.item_scraped),
            (self._closed, signals.spider_closed),
        ):
            crawler.signals.connect(handler, signal=signal)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        if not get_bool(settings, "ASYNCFETCH_REPORT"):
            raise NotConfigured("ASYNCFETCH_REPORT is off")
        directory = settings.get("ASYNCFETCH_REPORT_DIR") or settings.get("ASYNCFETCH_PAGES_DIR")
        if not directory:
            raise NotConfigured("neither ASYNCFETCH_REPORT_DIR nor ASYNCFETCH_PAGES_DIR is set")
        return cls(crawler, os.fspath(directory))

    def host(self, name: str) -> HostStats:
        stats = self.hosts.get(name)
        if stats is None:
            stats = self.hosts[name] = HostStats()
        return stats

    # -- what the signals tell -------------------------------------------------------

    def _opened(self) -> None:
        self.timeline = Timeline(time.monotonic())
        self.started = datetime.now(UTC)
        self._sampler = asyncio.get_running_loop().create_task(self._sample_every())

    def _response(self, response: Response, request: Request) -> None:
        stats = self.host(_host(request))
        stats.responses += 1
        stats.statuses[response.status] += 1
        latency = request.meta.get("download_latency")
        if latency is not None:
            stats.latency.add(latency)
            self.timeline.latency(time.monotonic(), latency)

    def _item(self, item: Any, response: Response) -> None:
        if isinstance(item, Page):
            self.host(_host(response.request) if response.request else "").pages += 1
            self.timeline.page(time.monotonic())

    # -- what sampling tells ------------------------------------------------------

    async def _sample_every(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            now = time.monotonic()
            self.sample(now - last)
            last = now

    def sample(self, elapsed: float) -> None:
        engine = self.crawler.engine
        if engine is None:
            return
        for key, transferring in _compat.slots_in_flight(engine.downloader):
            stats = self.host(key)
            stats.busiest = max(stats.busiest, transferring)
        middleware = AsyncFetchMiddleware.of(self.crawler)
        if middleware is None:
            return
        unreachable = middleware.breaker.open_keys()
        slowed = middleware.politeness.slowed_keys() if middleware.politeness else set()
        for key in slowed | unreachable:
            stats = self.host(key)
            if key in unreachable:
                stats.unreachable_seconds += elapsed
                if self._held.get(key) != "unreachable":
                    stats.breaker_opens += 1
            else:
                stats.slowed_seconds += elapsed
        self._held = {
            key: "unreachable" if key in unreachable else "slowed" for key in slowed | unreachable
        }

    # -- at close ----------------------------------------------------------------

    async def _closed(self, reason: str) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        middleware = AsyncFetchMiddleware.of(self.crawler)
        if middleware is not None:
            for key, sent in middleware.sent.items():
                self.host(key).requests = sent
        ledger = self.crawler.get_extension(Ledger)
        failures_file = ledger.path if ledger is not None else None
        summary = self.summary(reason)
        try:
            await asyncio.to_thread(self._write, summary, failures_file)
        except OSError as exc:
            logger.error("Cannot write the crawl report to %s: %s", self.directory, exc)
            return
        logger.info(
            "Crawl report: %s (and %s)",
            os.path.join(self.directory, REPORT_HTML),
            REPORT_JSON,
        )

    def summary(self, reason: str) -> dict[str, Any]:
        ended = datetime.now(UTC)
        return {
            "spider": getattr(self.crawler.spider, "name", None),
            "finish_reason": reason,
            "started": self.started.isoformat(timespec="seconds"),
            "ended": ended.isoformat(timespec="seconds"),
            "seconds": round((ended - self.started).total_seconds(), 1),
            "sample_interval": SAMPLE_INTERVAL,
        }

    def _write(self, summary: dict[str, Any], failures_file: str | None) -> None:
        if failures_file:
            self.count_failures(iter_json_lines(failures_file))
        hosts = {name: stats.as_dict() for name, stats in sorted(self.hosts.items()) if name}
        report = {
            **summary,
            "totals": _totals(hosts.values()),
            "hosts": hosts,
            "timeline": {
                "pages_per_second": self.timeline.pages,
                "mean_latency": [
                    None if x is None else round(x, 4) for x in self.timeline.mean_latency()
                ],
            },
        }
        os.makedirs(self.directory, exist_ok=True)
        atomic_write(
            os.path.join(self.directory, REPORT_JSON),
            json.dumps(report, indent=1).encode("utf-8"),
        )
        atomic_write(os.path.join(self.directory, REPORT_HTML), render_html(report).encode("utf-8"))

    def count_failures(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            stats = self.host(_url_host(record.get("url", "")))
            stats.failures[str(record.get("reason"))] += 1


def _host(request: Request) -> str:
    # The download slot when the middleware set one (a custom slot groups hosts), else the host.
    return str(request.meta.get("download_slot") or urlparse_cached(request).hostname or "")


def _url_host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _totals(hosts: Iterable[dict[str, Any]]) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for host in hosts:
        for name in ("requests", "responses", "pages", "failures"):
            totals[name] += host[name]
    return dict(totals)


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}
table{border-collapse:collapse}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td.host,th.host{text-align:left}td.bad{color:#b00}
.chart{border:1px solid #ddd;background:#fcfcfc}.axis{font-size:11px;fill:#555}
"""


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page with inline CSS and SVG: no script, no network."""
    hosts = sorted(report["hosts"].items(), key=lambda kv: -kv[1]["requests"])
    totals = report["totals"]
    rows = "\n".join(_host_row(name, host) for name, host in hosts[:HTML_HOSTS])
    more = (
        f"<p>{len(hosts) - HTML_HOSTS} more hosts in report.json.</p>"
        if len(hosts) > HTML_HOSTS
        else ""
    )
    timeline = report["timeline"]
    latency = [x if x is not None else math.nan for x in timeline["mean_latency"]]
    title = f"Crawl report: {html.escape(str(report['spider']))}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>
<body>
<h1>{title}</h1>
<p>Finished: <b>{html.escape(report["finish_reason"])}</b> after {report["seconds"]:,} s
({html.escape(report["started"])} to {html.escape(report["ended"])}).
{totals.get("requests", 0):,} requests, {totals.get("pages", 0):,} pages,
{totals.get("failures", 0):,} failures over {len(hosts):,} hosts.</p>
<h2>Pages per second</h2>
{_line_chart(timeline["pages_per_second"], "pages/s")}
<h2>Mean latency (seconds)</h2>
{_line_chart(latency, "s")}
<h2>Hosts</h2>
<table id="hosts">
<tr><th class="host">host</th><th>requests</th><th>pages</th><th>failures</th>
<th class="host">by reason</th>
<th>p50 s</th><th>p95 s</th><th>busiest in flight</th><th>slowed s</th><th>unreachable s</th>
<th>breaker opens</th></tr>
{rows}
</table>
{more}
<p class="axis">In flight, slowed and unreachable: sampled every {report["sample_interval"]} s.</p>
</body></html>
"""


def _host_row(name: str, host: dict[str, Any]) -> str:
    reasons = ", ".join(f"{html.escape(r)} {n:,}" for r, n in host["failures_by_reason"].items())
    bad = ' class="bad"' if host["failures"] else ""

    def seconds(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    return (
        f'<tr><td class="host">{html.escape(name)}</td><td>{host["requests"]:,}</td>'
        f"<td>{host['pages']:,}</td><td{bad}>{host['failures']:,}</td>"
        f'<td class="host">{reasons}</td>'
        f"<td>{seconds(host['latency_p50'])}</td><td>{seconds(host['latency_p95'])}</td>"
        f"<td>{host['busiest_in_flight']}</td><td>{host['slowed_seconds']:.1f}</td>"
        f"<td>{host['unreachable_seconds']:.1f}</td><td>{host['breaker_opens']}</td></tr>"
    )


def _line_chart(values: Sequence[float], unit: str, width: int = 800, height: int = 180) -> str:
    """An inline SVG line chart of one value per second."""
    pad = 40
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "<p>No data.</p>"
    top = max(finite) or 1.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)
    points: list[str] = []
    path: list[list[str]] = []
    for i, value in enumerate(values):
        if math.isnan(value):
            if points:
                path.append(points)
                points = []
            continue
        x = pad + i * step
        y = height - pad + (pad - height + pad) * value / top
        points.append(f"{x:.1f},{y:.1f}")
    if points:
        path.append(points)
    lines = "".join(
        f'<polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points="{" ".join(p)}"/>'
        for p in path
    )
    return (
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{unit} over time">'
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>'
        f'<text class="axis" x="{pad - 4}" y="{pad + 4}" text-anchor="end">{top:.3g}</text>'
        f'<text class="axis" x="{pad - 4}" y="{height - pad}" text-anchor="end">0</text>'
        f'<text class="axis" x="{width - pad}" y="{height - pad + 16}" text-anchor="end">'
        f"{len(values)} s</text>{lines}</svg>"
    )
