"""Issue 6, "nothing lost": a crawl with JOBDIR killed or interrupted mid-way,
then resumed, ends with every URL accounted for exactly once.

Each crawl runs in a process of its own (``python -m tests.faultcrawl``), so it
can be killed for real: SIGKILL (no chance to save anything) or SIGINT
(Scrapy's graceful stop).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scrapy_asyncfetch.warc import OPEN_SUFFIX, warc_files
from tests.faultcrawl import assert_accounted_once, read_json_lines, read_outcomes, temp_files
from tests.mockserver import MockServer
from tests.test_warc import warcio_cli

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent
URL_COUNT = 1000


def slow_urls(server: MockServer) -> list[str]:
    # Distinct query strings: the dupefilter keeps them all.
    return [server.url(f"/delay/0.2?n={n}", host=n % server.hosts + 1) for n in range(URL_COUNT)]


class Job:
    """A crawl of ``urls`` into ``root/pages`` with ``root/job`` as JOBDIR."""

    def __init__(self, root: Path, urls: list[str], start_window: int = 0, **settings: Any) -> None:
        self.urls = urls
        self.start_window = start_window
        self.settings = settings
        self.pages = root / "pages"
        self.jobdir = root / "job"
        self.url_file = root / "urls.txt"
        self.url_file.write_text("\n".join(urls) + "\n")
        self.root = root
        self.runs = 0

    def command(self) -> list[str]:
        self.runs += 1
        settings: dict[str, Any] = {
            "ADDONS": {"scrapy_asyncfetch.Addon": 300},
            "ASYNCFETCH_RESOLVER": "tests.resolver.LoopbackResolver",
            "ITEM_PIPELINES": {"scrapy_asyncfetch.PageWriterPipeline": 300},
            "ASYNCFETCH_PAGES_DIR": str(self.pages),
            "JOBDIR": str(self.jobdir),
            "CONCURRENT_REQUESTS": 32,
            "CONCURRENT_REQUESTS_PER_DOMAIN": 8,
            "ASYNCFETCH_SHUTDOWN_TIMEOUT": 0.5,
            "DOWNLOAD_TIMEOUT": 10,
            "TELNETCONSOLE_ENABLED": False,
            "ROBOTSTXT_OBEY": False,
            "LOG_LEVEL": "INFO",
            "LOG_FILE": str(self.root / f"run{self.runs}.log"),
            "ASYNCFETCH_START_WINDOW": self.start_window,
            **self.settings,
        }
        # With a start window of 0, start requests are read eagerly, as by a plain spider:
        # most of the list sits in the JOBDIR queue (and its seen set) while pages are
        # fetched. With a small one, a stop lands while start() is held part-way.
        return [
            sys.executable,
            "-m",
            "tests.faultcrawl",
            "--urls",
            str(self.url_file),
            "--settings",
            json.dumps(settings),
        ]

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def run(self) -> dict[str, Any]:
        """Run to the end; return the crawl's stats."""
        proc = subprocess.run(
            self.command(), check=False, cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.splitlines()[-1])["stats"]

    def manifest_lines(self) -> int:
        try:
            return (self.pages / "manifest.jsonl").read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def wait_for_pages(self, proc: subprocess.Popen[str], count: int) -> None:
        deadline = time.monotonic() + 30
        while self.manifest_lines() < count:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, f"only {self.manifest_lines()} pages"
            time.sleep(0.05)

    def log(self, run: int) -> str:
        return (self.root / f"run{run}.log").read_text(errors="replace")


def assert_completed(job: Job, stats: dict[str, Any]) -> None:
    assert stats["finish_reason"] == "finished"
    assert stats["asyncfetch/ledger/unaccounted"] == 0
    outcomes = assert_accounted_once(job.pages, job.urls)
    # Every page is a good one: none may end as a failure for having been cut off.
    assert outcomes.failures == [], outcomes.failures[:5]
    assert len(outcomes.pages) == len(job.urls)
    for record in outcomes.pages.values():
        assert (job.pages / record["path"]).read_bytes() == b"ok"


#: Read start() whole, as Scrapy does; or a little at a time, as the add-on does by default.
START_WINDOWS = pytest.mark.parametrize("start_window", [0, 50], ids=["whole", "windowed"])


@START_WINDOWS
def test_killed_crawl_resumes_to_completion(
    mockserver: MockServer, tmp_path: Path, start_window: int
) -> None:
    job = Job(tmp_path, slow_urls(mockserver), start_window)
    proc = job.start()
    try:
        job.wait_for_pages(proc, 300)
    finally:
        proc.kill()  # SIGKILL: nothing is saved, nothing is closed
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    written = read_json_lines(job.pages / "manifest.jsonl", allow_torn_tail=True)
    assert 300 <= len(written) < URL_COUNT
    read_json_lines(job.pages / "failures.jsonl", allow_torn_tail=True)

    stats = job.run()
    assert stats.get("asyncfetch/ledger/requeued_in_flight", 0) > 0
    assert not temp_files(job.pages)
    assert_completed(job, stats)
    assert "Unhandled error" not in job.log(2)


@START_WINDOWS
def test_killed_crawl_with_failures_records_each_failure_once(
    mockserver: MockServer, tmp_path: Path, start_window: int
) -> None:
    # Seen before the fix: a URL that failed (404) in the resumed run was
    # fetched and recorded twice, once given back by the journal and once let
    # through again from start(), as the kill had cut the tail of Scrapy's
    # dupefilter file.
    urls = [
        url if n % 5 else mockserver.url(f"/status/404?n={n}", host=n % mockserver.hosts + 1)
        for n, url in enumerate(slow_urls(mockserver))
    ]
    job = Job(tmp_path, urls, start_window)
    proc = job.start()
    try:
        job.wait_for_pages(proc, 300)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    stats = job.run()
    assert stats["finish_reason"] == "finished"
    assert stats["asyncfetch/ledger/unaccounted"] == 0
    outcomes = assert_accounted_once(job.pages, job.urls)
    assert {r["reason"] for r in outcomes.failures} == {"HttpError"}
    assert len(outcomes.failures) == URL_COUNT // 5
    assert stats.get("asyncfetch/ledger/repeated_outcomes", 0) == 0


@START_WINDOWS
def test_interrupted_crawl_stops_quickly_and_resumes(
    mockserver: MockServer, tmp_path: Path, start_window: int
) -> None:
    job = Job(tmp_path, slow_urls(mockserver), start_window)
    proc = job.start()
    try:
        job.wait_for_pages(proc, 200)
        proc.send_signal(signal.SIGINT)  # Scrapy's graceful stop
        interrupted = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    # In flight: 32 requests of 0.2 s, and ASYNCFETCH_SHUTDOWN_TIMEOUT = 0.5 s.
    assert stopped_in < 5.0
    stats = json.loads(stdout.splitlines()[-1])["stats"]
    assert stats["finish_reason"] == "shutdown"
    assert stats["asyncfetch/ledger/unaccounted"] == 0
    assert stats["asyncfetch/ledger/left_for_resume"] > 0
    # Everything written is intact: whole lines, a compacted manifest, no temp files.
    outcomes = read_outcomes(job.pages)
    assert outcomes.manifest_lines == len(outcomes.pages) >= 200
    assert outcomes.failures == []
    assert not temp_files(job.pages)
    for record in outcomes.pages.values():
        assert (job.pages / record["path"]).read_bytes() == b"ok"

    resumed = job.run()
    assert_completed(job, resumed)
    # Nothing fetched twice: the resumed run wrote exactly the pages still missing.
    assert resumed["asyncfetch/pages_written"] == URL_COUNT - len(outcomes.pages)


def test_killed_crawl_leaves_warc_files_that_the_next_run_repairs(
    mockserver: MockServer, tmp_path: Path
) -> None:
    warc = tmp_path / "warc"
    job = Job(tmp_path, slow_urls(mockserver), ASYNCFETCH_WARC_DIR=str(warc))
    proc = job.start()
    try:
        job.wait_for_pages(proc, 300)
    finally:
        proc.kill()
        proc.communicate()
    assert [p.name for p in warc.iterdir() if p.name.endswith(OPEN_SUFFIX)]

    stats = job.run()
    assert_completed(job, stats)
    assert not [p.name for p in warc.iterdir() if p.name.endswith(OPEN_SUFFIX)]
    files = warc_files(str(warc))
    assert len(files) == 2  # the killed run's, repaired, and the resumed run's
    checked = warcio_cli("check", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Repaired" in job.log(2)
