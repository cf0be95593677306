"""The cluster scenario: W workers of ``scrapy crawl pages`` on one crawl, one Redis.

    python -m benchmarks.cluster [--workers 1,2] [--hosts 10] [--per-domain N] [--pages 20000]
                                 [--concurrency 500] [--latency 0.1] [--rounds 2] [--out DIR]

Per round and W (interleaved, W's order rotated each round): a fresh ``redis-server`` on a
free loopback port (no persistence); the benchmark server, one process per host on 127.0.0.1
to 127.0.0.N (per-domain leases need many domains); one URL file, the pages spread over the
hosts; W processes of the example project's ``pages`` spider started at once with the same
command (``ASYNCFETCH_REDIS_URL``, a fresh ``ASYNCFETCH_CLUSTER``, each its own pages
directory, ``CONCURRENT_REQUESTS`` = C and ``--per-domain`` (default C / hosts) per domain
on every worker, robots.txt off). Measured: pages written (every worker's manifest) over the
wall time from the start of the first worker to the end of the last (start-up included, as a
user would see it); Redis script calls (the workers' round trips) and commands (those the
scripts run included) per request, and Redis CPU per request (``INFO commandstats`` and
``INFO cpu`` before and after); the workers' CPU per page (their rusage, as children) and
the largest worker peak RSS (``memusage/max`` from Scrapy's MemoryUsage extension).
Writes ``cluster.json`` and ``cluster.md`` to --out."""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.serverctl import stop_process

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PROJECT = REPO / "example_project"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                stop_process(process)
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    client.close()
    return process, url


def start_sites(hosts: int, latency: float) -> tuple[list[subprocess.Popen[str]], list[str]]:
    processes, bases = [], []
    for host in range(1, hosts + 1):
        address = f"127.0.0.{host}"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.server",
                "--host",
                address,
                "--latency",
                str(latency),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdout is not None
        info = json.loads(process.stdout.readline())
        processes.append(process)
        bases.append(f"http://{address}:{info['port']}")
    return processes, bases


SCRIPT_CALLS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_evalsha_ro", "cmdstat_eval_ro")


def redis_counters(url: str) -> tuple[int, int, float]:
    """Script calls so far (the workers' round trips are nearly all one script call each),
    commands so far (those scripts run included, INFO excluded), Redis CPU seconds so far."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        cpu = client.info("cpu")
    finally:
        client.close()
    scripts = sum(stats[k]["calls"] for k in SCRIPT_CALLS if k in stats)
    calls = sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")
    return scripts, calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def run_once(
    workers: int, bases: list[str], args: argparse.Namespace, workdir: Path, label: str
) -> dict[str, Any]:
    redis_dir = workdir / f"redis-{label}"
    redis_dir.mkdir()
    redis_process, url = start_redis(redis_dir)
    try:
        urls = workdir / "urls.txt"
        per_domain = args.per_domain or max(1, args.concurrency // len(bases))
        scripts_before, calls_before, cpu_before = redis_counters(url)
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        processes = []
        for n in range(workers):
            command = [
                sys.executable,
                "-m",
                "scrapy",
                "crawl",
                "pages",
                "-a",
                f"urls={urls}",
                "-s",
                f"ASYNCFETCH_REDIS_URL={url}",
                "-s",
                f"ASYNCFETCH_CLUSTER=bench-{label}",
                "-s",
                f"ASYNCFETCH_PAGES_DIR={workdir / label / f'worker-{n}'}",
                "-s",
                f"CONCURRENT_REQUESTS={args.concurrency}",
                "-s",
                f"CONCURRENT_REQUESTS_PER_DOMAIN={per_domain}",
                "-s",
                "ROBOTSTXT_OBEY=False",
                "-s",
                "ASYNCFETCH_PROGRESS=off",
                "-s",
                "ASYNCFETCH_REPORT=False",
                "-s",
                "LOG_LEVEL=INFO",
                # MemoryUsage samples every 60 s by default: a run shorter than that would
                # report its start-up RSS as its peak.
                "-s",
                "MEMUSAGE_CHECK_INTERVAL_SECONDS=1",
            ]
            log = (workdir / f"{label}-worker-{n}.log").open("w")
            processes.append(
                subprocess.Popen(command, cwd=EXAMPLE_PROJECT, stdout=log, stderr=log, text=True)
            )
            log.close()
        codes = [process.wait(timeout=args.timeout) for process in processes]
        wall = time.perf_counter() - started
        usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        scripts_after, calls_after, cpu_after = redis_counters(url)
    finally:
        stop_process(redis_process)
    written = sum(
        sum(1 for _ in path.open(encoding="utf-8"))
        for path in (workdir / label).glob("worker-*/manifest.jsonl")
    )
    peaks = [
        _memusage_max((workdir / f"{label}-worker-{n}.log").read_text(errors="replace"))
        for n in range(workers)
    ]
    worker_cpu = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    return {
        "workers": workers,
        "exit_codes": codes,
        "pages_written": written,
        "wall_s": wall,
        "pages_per_s": written / wall,
        "redis_scripts_per_request": (scripts_after - scripts_before) / max(written, 1),
        "redis_calls_per_request": (calls_after - calls_before) / max(written, 1),
        "redis_cpu_us_per_request": 1e6 * (cpu_after - cpu_before) / max(written, 1),
        "worker_cpu_ms_per_page": 1000 * worker_cpu / max(written, 1),
        "worker_peak_rss_mb": max(peaks),
    }


def _memusage_max(log: str) -> float:
    """A worker's peak RSS in MB, as Scrapy's MemoryUsage extension states it at the end
    (``memusage/max``; NaN if the log has none)."""
    found = re.findall(r"'memusage/max': (\d+)", log)
    return int(found[-1]) / 2**20 if found else math.nan


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    by_w: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        by_w.setdefault(run["workers"], []).append(run)
    base = statistics.median(r["pages_per_s"] for r in by_w[min(by_w)])
    lines = [
        f"{args.pages:,} pages on {args.hosts} hosts, {args.latency * 1000:.0f} ms latency, "
        f"C = {args.concurrency} a worker, {args.per_domain or 'C / hosts'} per domain, "
        f"{args.rounds} interleaved rounds, medians:",
        "",
        "| W | pages/s | of W=1 | Redis script calls a request | Redis commands a request "
        "| Redis CPU µs a request | worker CPU ms a page | worker peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workers, results in sorted(by_w.items()):

        def median(key: str, results: list[dict[str, Any]] = results) -> float:
            return statistics.median(r[key] for r in results)

        lines.append(
            f"| {workers} | {median('pages_per_s'):,.0f} | {median('pages_per_s') / base:.2f}x "
            f"| {median('redis_scripts_per_request'):.2f} "
            f"| {median('redis_calls_per_request'):.1f} "
            f"| {median('redis_cpu_us_per_request'):.0f} "
            f"| {median('worker_cpu_ms_per_page'):.2f} "
            f"| {median('worker_peak_rss_mb'):.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated W values")
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--pages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument(
        "--per-domain",
        type=int,
        default=0,
        help="CONCURRENT_REQUESTS_PER_DOMAIN (0: C / hosts). A worker leases domains enough to "
        "fill C twice over at this cap: with fewer hosts than that, one worker takes them all",
    )
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster"))
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    sites, bases = start_sites(args.hosts, args.latency)
    try:
        with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
            workdir = Path(tmp)
            with (workdir / "urls.txt").open("w", encoding="utf-8") as file:
                file.writelines(f"{bases[n % len(bases)]}/p/{n}\n" for n in range(args.pages))
            for round_ in range(args.rounds):
                order = counts[round_ % len(counts) :] + counts[: round_ % len(counts)]
                for workers in order:
                    run = run_once(workers, bases, args, workdir, f"r{round_}-w{workers}")
                    runs.append(run)
                    print(json.dumps(run), file=sys.stderr, flush=True)
    finally:
        for site in sites:
            stop_process(site)
    (args.out / "cluster.json").write_text(
        json.dumps({"args": vars(args), "runs": runs}, default=str)
    )
    table = report(runs, args)
    (args.out / "cluster.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
