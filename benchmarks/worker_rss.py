"""One ``scrapy crawl pages`` worker's RSS against pages written, sampled every few
seconds, in cluster mode (a fresh Redis) or alone, with optional extra settings:

    python -m benchmarks.worker_rss --pages 200000 --hosts 10 --cluster \
        --out benchmarks/results/worker-rss/cluster.md [-s NAME=VALUE ...]

It answers whether a worker's memory grows with the crawl (the frontier lives in Redis)
and how much of it is the responses queued in Scrapy's scraper.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from benchmarks.cluster import EXAMPLE_PROJECT, start_redis, start_sites
from benchmarks.longlist import ManifestCounter, tree_rss_mb
from benchmarks.serverctl import stop_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200_000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--per-domain", type=int, default=50)
    parser.add_argument("--cluster", action="store_true", help="run as a cluster worker")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("-s", dest="settings", action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sites, bases = start_sites(args.hosts, args.latency)
    redis_process = None
    rows: list[tuple[float, int, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="worker-rss-") as tmp:
            workdir = Path(tmp)
            urls = workdir / "urls.txt"
            with urls.open("w", encoding="utf-8") as file:
                file.writelines(f"{bases[n % len(bases)]}/p/{n}\n" for n in range(args.pages))
            command = [
                sys.executable, "-m", "scrapy", "crawl", "pages", "-a", f"urls={urls}",
                "-s", f"ASYNCFETCH_PAGES_DIR={workdir / 'pages'}",
                "-s", f"CONCURRENT_REQUESTS={args.concurrency}",
                "-s", f"CONCURRENT_REQUESTS_PER_DOMAIN={args.per_domain}",
                "-s", "ROBOTSTXT_OBEY=False", "-s", "ASYNCFETCH_PROGRESS=off",
                "-s", "ASYNCFETCH_REPORT=False", "-s", "LOG_LEVEL=INFO",
            ]  # fmt: skip
            if args.cluster:
                redis_process, url = start_redis(workdir)
                command += ["-s", f"ASYNCFETCH_REDIS_URL={url}", "-s", "ASYNCFETCH_CLUSTER=rss"]
            for setting in args.settings:
                command += ["-s", setting]
            manifest = ManifestCounter(workdir / "pages" / "manifest.jsonl")
            with (workdir / "worker.log").open("w") as log:
                worker = subprocess.Popen(command, cwd=EXAMPLE_PROJECT, stdout=log, stderr=log)
            process = psutil.Process(worker.pid)
            started = time.perf_counter()
            while worker.poll() is None:
                rows.append((time.perf_counter() - started, manifest.count(), tree_rss_mb(process)))
                time.sleep(args.interval)
            wall = time.perf_counter() - started
            code = worker.wait()
    finally:
        if redis_process is not None:
            stop_process(redis_process)
        for site in sites:
            stop_process(site)
    mode = "cluster worker" if args.cluster else "single process"
    lines = [
        f"One `scrapy crawl pages` {mode}, {args.pages:,} pages on {args.hosts} hosts, "
        f"{args.latency * 1000:.0f} ms latency, C = {args.concurrency}, {args.per_domain} "
        f"per domain; extra settings: {', '.join(args.settings) or 'none'}. "
        f"Exit code {code}, {args.pages / wall:.0f} pages/s over {wall:.0f} s.",
        "",
        "| seconds | pages written | RSS MB |",
        "|---|---|---|",
        *(f"| {t:.0f} | {n:,} | {rss:.0f} |" for t, n, rss in rows),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
