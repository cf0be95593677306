"""Live progress: the numbers, the periodic line, and the bar in a real terminal (tmux)."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from scrapy_asyncfetch.progress import RateMeter, Snapshot
from tests.conftest import asyncio_test, crawl
from tests.mockserver import MockServer
from tests.spiders import Collector
from tests.test_example_project import EXAMPLE_PROJECT, crawl_command

# --------------------------------------------------------------------------- the numbers


def test_rate_is_measured_over_the_window() -> None:
    now = [0.0]
    meter = RateMeter(window=10, clock=lambda: now[0])
    assert meter.add(0) is None
    now[0] = 2
    assert meter.add(100) == 50
    for second in range(3, 30):
        now[0] = second
        rate = meter.add(100 + 10 * (second - 2))
    # The early burst has left the window: only the last ~10 s count.
    assert rate == pytest.approx(10, rel=0.15)


def test_line_with_a_known_total_has_an_eta() -> None:
    snapshot = Snapshot(
        done=2_500,
        pages=2_400,
        total=10_000,
        entered=2_600,
        in_flight=16,
        queued=84,
        held_domains=1,
        failures=Counter({"HttpError": 70, "DownloadTimeoutError": 20, "NoPage": 5, "X": 5}),
        rate=50.0,
    )
    line = snapshot.line()
    assert line.startswith("2,500/10,000 done (25%), 2,400 pages written, 50.0/s")
    assert "16 in flight, 84 queued" in line
    assert "100 failed (HttpError 70, DownloadTimeoutError 20, NoPage 5, +1 more)" in line
    assert "1 domain(s) held" in line
    assert line.endswith("ETA 0:02:30")  # 7,500 left at 50/s


def test_line_without_a_total_counts_what_was_scheduled() -> None:
    snapshot = Snapshot(
        done=5, pages=5, total=None, entered=9, in_flight=4, queued=0, held_domains=0
    )
    assert snapshot.line().startswith("5 done of 9 scheduled so far, 5 pages written, -/s")
    assert "ETA" not in snapshot.line()


# --------------------------------------------------------------------------- the line


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "scrapy_asyncfetch.progress"]


@asyncio_test
async def test_a_periodic_line_replaces_scrapys_crawled_line(
    mockserver: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    urls = [mockserver.url(f"/delay/0.05?n={n}") for n in range(60)]
    settings = {"LOGSTATS_INTERVAL": 0.2, "CONCURRENT_REQUESTS": 4, "LOG_LEVEL": "INFO"}
    await crawl(Collector, settings, requests=urls)
    lines = progress_lines(caplog)
    assert len(lines) >= 3
    assert all(line.startswith("Progress: ") for line in lines)
    # The first when the spider opens, as LogStats' first line: before start() is read.
    assert lines[0].startswith("Progress: 0 done of 0 scheduled so far")
    assert lines[-1].startswith("Progress: 60 done of 60 scheduled so far, 0 pages written")
    assert not [r for r in caplog.records if r.getMessage().startswith("Crawled ")]


@asyncio_test
async def test_off_brings_back_scrapys_line(
    mockserver: MockServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    urls = [mockserver.url(f"/delay/0.05?n={n}") for n in range(20)]
    settings = {"LOGSTATS_INTERVAL": 0.2, "ASYNCFETCH_PROGRESS": "off", "LOG_LEVEL": "INFO"}
    await crawl(Collector, settings, requests=urls)
    assert progress_lines(caplog) == []
    assert [r for r in caplog.records if r.getMessage().startswith("Crawled ")]


# --------------------------------------------------------------------------- the bar

BAR = re.compile(r"^\s*\d+%\|[^|]*\| [\d,]+/[\d,]+ done")
#: A log record's first line, or a line of the multi-line ones Scrapy logs at start and end.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[|[\[\]{}' <]|\s)")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
def test_the_bar_stays_under_the_log_in_a_terminal(mockserver: MockServer, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    count = 400
    # Some fail (404): their log lines must land above the bar too.
    urls.write_text(
        "".join(
            mockserver.url(f"/status/404?n={n}" if n % 50 == 0 else f"/delay/0.1?n={n}") + "\n"
            for n in range(count)
        )
    )
    command, env = crawl_command(tmp_path, "-a", f"urls={urls}", "-s", "ROBOTSTXT_OBEY=False")
    session = f"asyncfetch-{tmp_path.name}"
    shell = " ".join(f"'{part}'" for part in command)
    environment = " ".join(f"{k}='{v}'" for k, v in env.items() if k == "PYTHONPATH")
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "200",
            "-y",
            "40",
            f"cd '{EXAMPLE_PROJECT}' && env {environment} {shell}; echo CRAWL-ENDED; sleep 60",
        ],
        check=True,
    )
    screens: list[list[str]] = []

    def capture(*history: str) -> list[str]:
        pane = subprocess.run(
            ["tmux", "capture-pane", "-p", *history, "-t", session],
            capture_output=True,
            text=True,
            check=True,
        )
        return pane.stdout.rstrip("\n").splitlines()

    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(0.5)
            screens.append(capture())
            if any("CRAWL-ENDED" in line for line in screens[-1]):
                break
        history = capture("-S", "-")  # the whole scrollback
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    assert any("CRAWL-ENDED" in line for line in screens[-1]), screens[-1]

    during = [s for s in screens[:-1] if any(BAR.match(line) for line in s)]
    assert len(during) >= 3, screens[-1]
    for screen in during:
        lines = [line for line in screen if line.strip()]
        # The bar is the last line, once; everything above it is whole log lines.
        assert BAR.match(lines[-1]), lines[-3:]
        assert sum(bool(BAR.match(line)) for line in lines) == 1, lines
        assert all("%|" not in line for line in lines[:-1]), lines
        assert all(LOG_LINE.match(line) for line in lines[:-1]), lines
    assert any("Ignoring response <404" in line for screen in during for line in screen)
    # At the end the bar shows everything done, and stays (the closing log goes below it).
    done = f"{count:,}/{count:,} done"
    assert any(BAR.match(line) and done in line for line in history), history
