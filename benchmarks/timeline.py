"""Where a Scrapy crawl's wall time goes: ``python -m benchmarks.timeline`` (from the repo root).

Starts the benchmark server, runs the Scrapy runners (``benchmarks.runners.scrapy_crawl``)
interleaved for a few rounds, and tabulates the timeline each run reports, in seconds after
``spider_opened``: when ``start()`` was exhausted, when the 1st, 10%, 50%, 90% and last page
reached the callback, and the steady rate (pages/s between the 10% and 90% marks).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.latency import LatencySpec
from benchmarks.runners.scrapy_crawl import timeline_marks
from benchmarks.runners.scrapy_settings import VARIANTS
from benchmarks.serverctl import ServerHandle

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("start_done", "first", "p10", "p50", "p90", "last", "steady pages/s")


def _run(variant: str, base_url: str, pages: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.runners.scrapy_crawl", "--variant", variant),
            *("--base-url", base_url, "--pages", str(pages), "--concurrency", str(concurrency)),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    timeline: dict[str, float] = json.loads(out.stdout.splitlines()[-1])["extra"]["timeline"]
    marks = timeline_marks(pages)
    timeline["steady pages/s"] = (marks["p90"] - marks["p10"]) / (timeline["p90"] - timeline["p10"])
    return timeline


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.timeline", description=__doc__)
    p.add_argument("--variants", default="addon,aiohttp-handler", help=f"from {VARIANTS}")
    p.add_argument("--latency", default="fixed:0.1", help="e.g. fixed:0.1, exp:0.1")
    p.add_argument("--pages", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerHandle(
            latency=LatencySpec.parse(args.latency),
            body_size=4096,
            error_rate=0.0,
            workers=1,
            cwd=REPO,
            log_path=Path(tmp) / "server.log",
        ) as server,
    ):
        for _ in range(args.rounds):
            for variant in variants:
                runs[variant].append(_run(variant, server.base_url, args.pages, args.concurrency))
    print(
        f"latency {args.latency}, N={args.pages}, C={args.concurrency}: median (min-max) of "
        f"{args.rounds} rounds; times in seconds after spider_opened\n"
    )
    print("| variant | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for variant, results in runs.items():
        cells = []
        for column in COLUMNS:
            values = [r[column] for r in results]
            cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
