"""What a live progress display costs: tqdm against rich, and the add-on's display in a crawl.

    python -m benchmarks.progress_overhead [--out DIR] [--rounds 5] [--pages 5000]
                                           [--concurrency 100] [--latency 0.1]

1. **The libraries**, in this process, drawing to a real pseudo-terminal (``os.openpty``,
   drained by a thread as a terminal would be): CPU microseconds (``time.process_time``) for
   one refresh of a bar carrying the add-on's progress line, and for one log record written
   above the bar. tqdm as ``scrapy_asyncfetch.progress`` draws it (``set_description_str``,
   ``refresh``, ``tqdm.write``); rich as its documented equivalent (``Progress`` with a
   description column and a bar, ``auto_refresh=False``, ``refresh``, ``console.print``).
2. **The crawl**: the benchmark's minimal spider with the add-on (runner 7's crawl), its
   stderr on a pseudo-terminal so ``ASYNCFETCH_PROGRESS=auto`` would pick the bar, run with
   ``ASYNCFETCH_PROGRESS`` = ``off``, ``line`` and ``bar``, interleaved over rounds; pages/s
   and CPU per page (user + system), medians.

Needs the bench extra (rich is in it). Writes ``progress_overhead.json`` and ``.md`` to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from benchmarks.latency import LatencySpec
from benchmarks.runners.common import RunnerArgs
from benchmarks.serverctl import ServerHandle

REPO = Path(__file__).resolve().parents[1]
MODES = ("off", "line", "bar")
#: A progress line as long as the add-on's on a busy crawl.
LINE = (
    "41,250/1,000,000 done (4%), 41,002 pages written, 1,310.4/s, 500 in flight, "
    "9,500 queued, 248 failed (HttpError 200, DownloadTimeoutError 40, NoPage 8), "
    "3 domain(s) held, ETA 0:12:11"
)
RECORD = "2026-12-05 06:00:00 [scrapy.core.engine] INFO: Spider opened\n"


class Terminal:
    """A pseudo-terminal whose output a thread reads and discards, as a terminal would."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.stream: TextIO = io.TextIOWrapper(
            io.FileIO(self.slave, "w", closefd=False), write_through=True
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        try:
            while os.read(self.master, 65536):
                pass
        except OSError:
            pass  # closed

    def close(self) -> None:
        self.stream.close()
        os.close(self.slave)
        os.close(self.master)


def _cpu_us_per_call(call: Callable[[int], None], count: int) -> float:
    started = time.process_time()
    for n in range(count):
        call(n)
    return (time.process_time() - started) / count * 1e6


def tqdm_costs(stream: TextIO, count: int) -> dict[str, float]:
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=10 * count, file=stream, bar_format="{percentage:3.0f}%|{bar:20}| {desc}")

    def refresh(n: int) -> None:
        bar.n = n
        bar.set_description_str(LINE, refresh=False)
        bar.refresh()

    def record(_: int) -> None:
        tqdm.write(RECORD, file=stream, end="")

    costs = {"refresh": _cpu_us_per_call(refresh, count), "record": _cpu_us_per_call(record, count)}
    bar.close()
    return costs


def rich_costs(stream: TextIO, count: int) -> dict[str, float]:
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, Progress, TextColumn  # noqa: PLC0415

    console = Console(file=stream, force_terminal=True, width=160)
    progress = Progress(
        BarColumn(bar_width=20),
        TextColumn("{task.description}"),
        console=console,
        auto_refresh=False,
    )
    progress.start()
    task = progress.add_task(LINE, total=10 * count)

    def refresh(n: int) -> None:
        progress.update(task, completed=n, description=LINE)
        progress.refresh()

    def record(_: int) -> None:
        progress.console.print(RECORD, end="", markup=False, highlight=False)

    costs = {"refresh": _cpu_us_per_call(refresh, count), "record": _cpu_us_per_call(record, count)}
    progress.stop()
    return costs


def library_costs(rounds: int, count: int) -> dict[str, dict[str, float]]:
    """Median CPU microseconds per refresh and per record, per library."""
    samples: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for name, measure in (("tqdm", tqdm_costs), ("rich", rich_costs)):
            terminal = Terminal()
            try:
                for what, value in measure(terminal.stream, count).items():
                    samples.setdefault(name, {}).setdefault(what, []).append(value)
            finally:
                terminal.close()
    return {
        name: {what: statistics.median(values) for what, values in costs.items()}
        for name, costs in samples.items()
    }


def crawl_child(mode: str, args: RunnerArgs) -> None:
    """Runner 7's crawl with ``ASYNCFETCH_PROGRESS = mode``; one JSON result on stdout."""
    from scrapy.crawler import AsyncCrawlerProcess  # noqa: PLC0415

    from benchmarks.runners.scrapy_crawl import Probe, bench_spider, finish  # noqa: PLC0415
    from benchmarks.runners.scrapy_settings import variant_settings  # noqa: PLC0415

    probe = Probe(args.pages)
    settings, meta = variant_settings("addon", args.concurrency)
    settings = {**settings, "ASYNCFETCH_PROGRESS": mode, "LOGSTATS_INTERVAL": 1.0}
    process = AsyncCrawlerProcess(settings)
    crawler = process.create_crawler(bench_spider(args, probe))
    probe.connect(crawler)
    process.crawl(crawler)
    finish(process, crawler, probe, args, f"7-asyncfetch-progress-{mode}", **meta).emit()


def crawl_once(mode: str, base_url: str, pages: int, concurrency: int) -> dict[str, Any]:
    terminal = Terminal()
    try:
        command = [
            sys.executable,
            "-m",
            "benchmarks.progress_overhead",
            "--child",
            mode,
            "--base-url",
            base_url,
            "--pages",
            str(pages),
            "--concurrency",
            str(concurrency),
        ]
        done = subprocess.run(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=terminal.slave,
            text=True,
            check=True,
        )
    finally:
        terminal.close()
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    pages = max(result["pages_ok"], 1)
    result["pages_per_s"] = result["pages_ok"] / result["wall_s"]
    result["cpu_ms_per_page"] = 1000 * result["cpu_s"] / pages
    return result


def crawl_costs(
    rounds: int, pages: int, concurrency: int, latency: float, workdir: Path
) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with ServerHandle(
        latency=LatencySpec.parse(str(latency)),
        body_size=2048,
        error_rate=0.0,
        workers=1,
        cwd=REPO,
        log_path=workdir / "server.log",
    ) as server:
        for round_ in range(rounds):
            # Rotated, so no mode always runs first in a round.
            order = MODES[round_ % len(MODES) :] + MODES[: round_ % len(MODES)]
            for mode in order:
                result = crawl_once(mode, server.base_url, pages, concurrency)
                runs[mode].append(result)
                print(
                    f"round {round_ + 1} {mode:>4}: {result['pages_per_s']:.0f} pages/s, "
                    f"{result['cpu_ms_per_page']:.3f} ms CPU a page, {result['errors']} errors",
                    file=sys.stderr,
                )
    return {
        mode: {
            "pages_per_s": statistics.median(r["pages_per_s"] for r in results),
            "cpu_ms_per_page": statistics.median(r["cpu_ms_per_page"] for r in results),
            "runs": len(results),
        }
        for mode, results in runs.items()
    }


def report(libraries: dict[str, dict[str, float]], crawls: dict[str, dict[str, float]]) -> str:
    lines = [
        "CPU per operation, drawing to a pseudo-terminal (medians):",
        "",
        "| library | refresh (µs) | log record above the bar (µs) |",
        "|---|---|---|",
    ]
    for name, costs in libraries.items():
        lines.append(f"| {name} | {costs['refresh']:.0f} | {costs['record']:.0f} |")
    lines += [
        "",
        "Runner 7's crawl with ASYNCFETCH_PROGRESS set, stderr on a pseudo-terminal (medians):",
        "",
        "| ASYNCFETCH_PROGRESS | pages/s | CPU ms a page | of `off`'s pages/s |",
        "|---|---|---|---|",
    ]
    base = crawls["off"]["pages_per_s"]
    for mode, costs in crawls.items():
        lines.append(
            f"| {mode} | {costs['pages_per_s']:.0f} | {costs['cpu_ms_per_page']:.3f} "
            f"| {costs['pages_per_s'] / base:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/progress"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--operations", type=int, default=2000, help="per library and round")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        crawl_child(args.child, RunnerArgs(args.base_url, args.pages, args.concurrency, 60.0))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    libraries = library_costs(args.rounds, args.operations)
    crawls = crawl_costs(args.rounds, args.pages, args.concurrency, args.latency, args.out)
    (args.out / "progress_overhead.json").write_text(
        json.dumps({"libraries": libraries, "crawls": crawls, "args": vars(args)}, default=str)
    )
    table = report(libraries, crawls)
    (args.out / "progress_overhead.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
