"""The crawl report: its figures from a real crawl, and its page rendered by a real browser."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from scrapy import Request, Spider
from scrapy.http import Response

from scrapy_asyncfetch.page import Page
from scrapy_asyncfetch.report import REPORT_HTML, REPORT_JSON, LatencyHistogram, render_html
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer

# --------------------------------------------------------------------------- the figures


def test_percentiles_are_within_the_bucket_width() -> None:
    histogram = LatencyHistogram()
    for n in range(1, 1001):
        histogram.add(n / 1000)  # 1 ms to 1 s, evenly
    assert histogram.percentile(0.5) == pytest.approx(0.5, rel=0.05)
    assert histogram.percentile(0.95) == pytest.approx(0.95, rel=0.05)
    assert LatencyHistogram().percentile(0.5) is None


def test_html_escapes_what_servers_and_urls_choose() -> None:
    host = {
        "requests": 1,
        "responses": 1,
        "pages": 0,
        "failures": 1,
        "failures_by_reason": {"<script>alert(1)</script>": 1},
        "statuses": {},
        "latency_p50": None,
        "latency_p95": None,
        "busiest_in_flight": 1,
        "slowed_seconds": 0.0,
        "unreachable_seconds": 0.0,
        "breaker_opens": 0,
    }
    page = render_html(
        {
            "spider": "<b>",
            "finish_reason": "finished",
            "started": "s",
            "ended": "e",
            "seconds": 1.0,
            "sample_interval": 0.25,
            "totals": {},
            "hosts": {"<img src=x>": host},
            "timeline": {"pages_per_second": [], "mean_latency": []},
        }
    )
    assert "<script>" not in page
    assert "<img src=x>" not in page
    assert "&lt;img src=x&gt;" in page


# --------------------------------------------------------------------------- a crawl


class ReportSpider(Spider):
    name = "report"

    def __init__(self, urls: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.urls = urls

    async def start(self) -> AsyncIterator[Request]:
        for url in self.urls:
            yield Request(url)

    def parse(self, response: Response) -> Any:
        yield Page.from_response(response)


def crawl_urls(server: MockServer, closed_port: int) -> list[str]:
    fast = [server.url(f"/delay/0.01?n={n}", host=1) for n in range(30)]
    slow = [server.url(f"/delay/0.3?n={n}", host=2) for n in range(30)]
    missing = [server.url(f"/status/404?n={n}", host=3) for n in range(10)]
    down = [f"http://127.0.0.9:{closed_port}/page/{n}" for n in range(10)]
    return fast + slow + missing + down


@asyncio_test
async def test_per_host_figures_tell_fast_slow_failing_and_down_hosts_apart(
    mockserver: MockServer, closed_port: int, tmp_path: Path
) -> None:
    settings = {
        "ITEM_PIPELINES": {"scrapy_asyncfetch.PageWriterPipeline": 300},
        "ASYNCFETCH_PAGES_DIR": str(tmp_path),
        "CONCURRENT_REQUESTS": 16,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 4,
        "ASYNCFETCH_BREAKER_HOLD": 0,
        "LOG_LEVEL": "INFO",
    }
    await crawl(ReportSpider, settings, urls=crawl_urls(mockserver, closed_port))
    report = json.loads((tmp_path / REPORT_JSON).read_text())
    hosts = report["hosts"]
    fast, slow, missing, down = (hosts[f"127.0.0.{n}"] for n in (1, 2, 3, 9))
    assert (fast["pages"], slow["pages"], missing["pages"], down["pages"]) == (30, 30, 0, 0)
    assert missing["statuses"] == {"404": 10}
    assert missing["failures_by_reason"] == {"HttpError": 10}
    assert fast["requests"] == fast["responses"] == 30
    assert down["responses"] == 0
    assert down["failures"] == 10
    assert set(down["failures_by_reason"]) <= {
        "DownloadConnectionRefusedError",
        "HostUnavailableError",
    }
    # The slow host's latency shows; the fast one's does not.
    assert slow["latency_p50"] >= 0.25
    assert fast["latency_p50"] < slow["latency_p50"]
    # At most the per-domain cap in flight, and the slow host reached it.
    assert all(host["busiest_in_flight"] <= 4 for host in hosts.values())
    assert slow["busiest_in_flight"] == 4
    # The down host's breaker opened, and it was seen open.
    assert down["breaker_opens"] >= 1
    assert down["unreachable_seconds"] > 0
    assert report["totals"]["pages"] == 60
    assert sum(report["timeline"]["pages_per_second"]) == 60
    html = (tmp_path / REPORT_HTML).read_text()
    assert "127.0.0.9" in html
    assert "<script" not in html  # self-contained and static


# --------------------------------------------------------------------------- in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines of an 8-bit RGB(A) PNG, with the standard library."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat = 8, b""
    width = height = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    return width, height, zlib.decompress(idat)


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_the_demo_crawls_report_renders_in_a_browser(tmp_path: Path) -> None:
    from tests.test_example_project import crawl as crawl_demo  # noqa: PLC0415

    log, _ = crawl_demo(tmp_path)
    report = tmp_path / "pages" / REPORT_HTML
    assert f"Crawl report: {report}" in log
    assert CHROMIUM is not None
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(
        [*browser, "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # The browser built the table: a header row and one row per demo host.
    assert dom.count('<td class="host">127.0.0.') == 4
    assert dom.count("<svg") == 2
    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, "--window-size=1200,900", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1200, 900)
    # Not a blank page: text, lines and table borders make many distinct bytes.
    assert len(set(pixels[: len(pixels) // 2])) > 20
