"""The middleware under every way of running Scrapy, each in a fresh process:
the aiohttp session must be created inside the running loop and closed before
it stops, whoever starts the loop. Then the benchmark harness's own runners
(``benchmarks/``), on a few pages, so that a change cannot break them unseen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import longlist, progress_overhead
from benchmarks.analysis import evaluate_targets
from benchmarks.latency import LatencySpec
from benchmarks.scenarios import MAIN_JOB_C, SCENARIO_NAMES, ScenarioOptions, build_scenarios
from benchmarks.serverctl import ServerHandle
from tests.mockserver import MockServer

REPO = Path(__file__).resolve().parent.parent

SPIDER = """
import json, sys
import scrapy

class Pages(scrapy.Spider):
    name = "pages"

    async def start(self):
        for i in range(10):
            yield scrapy.Request(f"{URL}/page/{i}")

    async def parse(self, response):
        yield {"url": response.url}

SETTINGS = {
    "ADDONS": {"scrapy_asyncfetch.Addon": 300},
    "LOG_LEVEL": "INFO",
    "TELNETCONSOLE_ENABLED": False,
}

def report(crawler):
    stats = crawler.stats.get_stats()
    print("RESULT " + json.dumps({
        "responses": stats.get("asyncfetch/responses"),
        "items": stats.get("item_scraped_count"),
        "finish_reason": stats.get("finish_reason"),
    }), flush=True)
"""

RUNNERS = {
    "CrawlerProcess": """
from scrapy.crawler import CrawlerProcess
process = CrawlerProcess(SETTINGS)
crawler = process.create_crawler(Pages)
process.crawl(crawler)
process.start()
report(crawler)
""",
    "AsyncCrawlerProcess": """
from scrapy.crawler import AsyncCrawlerProcess
process = AsyncCrawlerProcess(SETTINGS)
crawler = process.create_crawler(Pages)
process.crawl(crawler)
process.start()
report(crawler)
""",
    "CrawlerRunner": """
from scrapy.crawler import CrawlerRunner
from scrapy.utils.log import configure_logging
from scrapy.utils.reactor import install_reactor
install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
from twisted.internet import reactor
configure_logging()
runner = CrawlerRunner(SETTINGS)
crawler = runner.create_crawler(Pages)
d = runner.crawl(crawler)
d.addBoth(lambda _: reactor.stop())
reactor.run()
report(crawler)
""",
    "AsyncCrawlerRunner": """
import asyncio
from scrapy.crawler import AsyncCrawlerRunner
from scrapy.utils.log import configure_logging
from scrapy.utils.reactor import install_reactor
install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
from twisted.internet import reactor
from twisted.internet.defer import Deferred
configure_logging()
runner = AsyncCrawlerRunner(SETTINGS)
crawler = runner.create_crawler(Pages)
d = Deferred.fromFuture(asyncio.ensure_future(runner.crawl(crawler)))
d.addBoth(lambda _: reactor.stop())
reactor.run()
report(crawler)
""",
    "no reactor (TWISTED_REACTOR_ENABLED=False)": """
from scrapy.crawler import AsyncCrawlerProcess
process = AsyncCrawlerProcess({**SETTINGS, "TWISTED_REACTOR_ENABLED": False})
crawler = process.create_crawler(Pages)
process.crawl(crawler)
process.start()
report(crawler)
""",
}


def run_script(code: str, cwd: Path) -> tuple[dict[str, object], str]:
    script = cwd / "run_crawl.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, "-W", "error::scrapy.exceptions.ScrapyDeprecationWarning", str(script)],
        cwd=cwd,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = done.stdout + done.stderr
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0, log
    assert results, log
    return json.loads(results[-1].removeprefix("RESULT ")), log


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_runs_under(runner: str, mockserver: MockServer, tmp_path: Path) -> None:
    code = SPIDER.replace("{URL}", mockserver.url("")) + textwrap.dedent(RUNNERS[runner])
    result, log = run_script(code, tmp_path)
    assert result == {"responses": 10, "items": 10, "finish_reason": "finished"}, log
    for bad in ("Unclosed", "no running event loop", "Traceback", "ScrapyDeprecationWarning"):
        assert bad not in log, log


def test_scrapy_runspider_command(mockserver: MockServer, tmp_path: Path) -> None:
    spider = tmp_path / "pages.py"
    spider.write_text(SPIDER.replace("{URL}", mockserver.url("")))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scrapy",
            "runspider",
            str(spider),
            "-s",
            'ADDONS={"scrapy_asyncfetch.Addon": 300}',
            "-o",
            str(tmp_path / "items.jsonl"),
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "'asyncfetch/responses': 10" in log
    assert len((tmp_path / "items.jsonl").read_text().splitlines()) == 10
    assert "Unclosed" not in log


# --- The benchmark harness (benchmarks/) ---------------------------------------------------


@pytest.fixture(scope="module")
def bench_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    log = tmp_path_factory.mktemp("bench-server") / "server.log"
    with ServerHandle(
        latency=LatencySpec.parse("fixed:0.005"),
        body_size=512,
        error_rate=0.0,
        workers=1,
        cwd=REPO,
        log_path=log,
    ) as server:
        yield server


def run_bench_runner(module: str, base_url: str, cwd: Path, pages: int = 50) -> dict[str, Any]:
    """Run one benchmark runner as the orchestrator does and return its JSON record."""
    args = ["--base-url", base_url, "--pages", str(pages), "--concurrency", "10"]
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def test_crawlee_runner(bench_server: ServerHandle, tmp_path: Path) -> None:
    pytest.importorskip("crawlee")
    record = run_bench_runner("benchmarks.runners.crawlee_http", bench_server.base_url, tmp_path)
    assert record["runner"] == "8-crawlee"
    assert (record["pages_ok"], record["errors"], record["concurrency"]) == (50, 0, 10)
    assert min(record["wall_s"], record["cpu_s"], record["peak_rss_mb"]) > 0
    assert record["extra"]["crawlee"]["requests_finished"] == 50
    # In-memory storage: nothing written where it ran.
    assert list(tmp_path.iterdir()) == []


def test_pages_job_runner(bench_server: ServerHandle, tmp_path: Path) -> None:
    record = run_bench_runner("benchmarks.runners.pages_job", bench_server.base_url, tmp_path)
    assert record["runner"] == "9-pages-job"
    assert (record["pages_ok"], record["errors"]) == (50, 0)
    assert record["extra"]["finish_reason"] == "finished"


def test_progress_overhead_harness(bench_server: ServerHandle) -> None:
    pytest.importorskip("rich")
    costs = progress_overhead.library_costs(rounds=1, count=20)
    assert set(costs) == {"tqdm", "rich"}
    assert all(value > 0 for library in costs.values() for value in library.values())
    # The bar mode's crawl, its stderr on a pseudo-terminal.
    result = progress_overhead.crawl_once("bar", bench_server.base_url, pages=50, concurrency=10)
    assert (result["pages_ok"], result["errors"]) == (50, 0)
    assert result["pages_per_s"] > 0


def test_scenarios_place_runners_8_and_9() -> None:
    opts = ScenarioOptions(
        latency=LatencySpec.parse("fixed:0.1"),
        zero_latency=LatencySpec.parse("fixed:0"),
        pages=dict.fromkeys(SCENARIO_NAMES, 1000),
        sweep_c=(10, 500),
        sync_pages=200,
        runners=frozenset("123456789"),
    )
    cells = {s.name: s.cells for s in build_scenarios(list(SCENARIO_NAMES), opts)}
    for name in ("sweep", "seed", "cpu", "memory"):
        assert any(c.runner == "8" for c in cells[name]), name
    assert sorted(c.concurrency for c in cells["sweep"] if c.runner == "8") == [10, 500]
    assert not any(c.runner in "89" for c in cells["targets"])
    main_job = [(c.runner, c.concurrency) for c in cells["main-job"]]
    assert main_job == [(r, c) for c in MAIN_JOB_C for r in "79"]
    assert not any(c.runner == "9" for name in cells if name != "main-job" for c in cells[name])


def test_main_job_checks_compare_runs_at_the_same_c() -> None:
    def row(runner: str, concurrency: int, pps: float, cpu: float) -> dict[str, Any]:
        return {
            "scenario": "main-job",
            "runner": runner,
            "concurrency": concurrency,
            "rounds_ok": 1,
            "pages_per_s": pps,
            "cpu_s_per_1000_pages": cpu,
            "limit_pages_per_s": 10 * concurrency,
        }

    rows = [row("7", 100, 900, 1.0), row("9", 100, 850, 1.2)]
    rows += [row("7", 500, 1000, 1.0), row("9", 500, 500, 2.0)]
    checks = {
        t["check"]: (round(t["value"], 3), t["status"])
        for t in evaluate_targets(rows)
        if t["check"].startswith("9 vs 7")
    }
    assert checks["9 vs 7 pages/s, C=100"] == (round(850 / 900, 3), "PASS")
    assert checks["9 vs 7 CPU per page, C=100"] == (1.2, "PASS")
    assert checks["9 vs 7 pages/s, C=500"] == (0.5, "FAIL")
    assert checks["9 vs 7 CPU per page, C=500"] == (2.0, "FAIL")


def test_manifest_counter_counts_whole_lines(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    counter = longlist.ManifestCounter(manifest)
    assert counter.count() == 0  # not written yet
    manifest.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')
    assert counter.count() == 2
    with manifest.open("ab") as file:
        file.write(b': 3}\n{"d": 4}\n')
    assert counter.count() == 4


def test_longlist_samples_and_stops_a_crawl(tmp_path: Path) -> None:
    # 20,000 URLs at 10 in flight and 50 ms take ~100 s: the 6 s limit must stop the crawl,
    # which leaves a loaded machine seconds to start Scrapy and write some pages first.
    argv = ["--urls", "20000", "--max-seconds", "6", "--variants", "addon", "--concurrency"]
    argv += ["10", "--latency", "fixed:0.05", "--interval", "0.5", "--no-plot"]
    assert longlist.main([*argv, "--out", str(tmp_path)]) == 0
    (run,) = json.loads((tmp_path / "longlist.json").read_text())["runs"]
    assert run["stopped"], run
    assert run["returncode"] == 0, run["stats"]
    assert run["stats"]["finish_reason"] == "shutdown"
    assert "scrapy_asyncfetch" in run["addons"]
    samples = run["samples"]
    assert len(samples) >= 4
    assert 0 < samples[-1]["pages"] <= run["pages"] < 20000
    assert 30 < run["peak_rss_mb"] < 500
    csv_lines = (tmp_path / "longlist.csv").read_text().splitlines()
    assert csv_lines[0] == "variant,t_s,rss_mb,pages"
    assert len(csv_lines) == len(samples) + 1
