"""Memory against a long URL list: ``python -m benchmarks.longlist --out DIR`` (repo root).

Writes a URL file of ``--urls`` lines (1,000,000 by default) on the benchmark server, then
for each variant runs the example project's ``scrapy crawl pages -a urls=FILE`` in
``example_project/`` (a fresh subprocess, its pages into a temporary directory) and samples
every ``--interval`` seconds the crawl's RSS (the process and any children, by psutil) and
the pages written so far (lines of its ``manifest.jsonl``, counted as the file grows). A run
that has not finished after ``--max-seconds`` gets SIGINT (Scrapy's graceful stop), then
SIGTERM, then SIGKILL.

Variants are those of ``benchmarks.politeness`` (``stock`` is ``-s ADDONS={}``, checked in
the log). Every run gets ``ROBOTSTXT_OBEY=False``, ``LOG_LEVEL=INFO`` and
``CONCURRENT_REQUESTS = CONCURRENT_REQUESTS_PER_DOMAIN = --concurrency``.

Output in ``--out``: ``longlist.json`` (configuration, machine, every run with its samples
and Scrapy's final stats), ``longlist.csv`` (variant, seconds, RSS MB, pages), ``longlist.md``
(one row per run), ``longlist.png`` (RSS against pages fetched and against time, one line
per variant) and ``raw/`` (each crawl's log and the server's).
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.latency import LatencySpec
from benchmarks.machine import machine_info
from benchmarks.politeness.crawl import (
    COMMON_SETTINGS,
    PROJECT_DIR,
    enabled_addons,
    pages_command,
    parse_stats,
    stop_group,
)
from benchmarks.politeness.variants import VARIANTS
from benchmarks.runners.pages_job import write_url_file
from benchmarks.serverctl import ServerHandle
from scrapy_asyncfetch.storage import MANIFEST_NAME

REPO = Path(__file__).resolve().parent.parent
# Issue 12's bound for the add-on: under 150 MB, flat from the first minute to the end.
RSS_TARGET_MB = 150.0
FLAT_FROM_S = 60.0
# After --max-seconds: SIGINT lets Scrapy finish what is in flight and dump its stats; a
# second signal makes it stop at once; SIGKILL if even that hangs.
STOP_STEPS = ((signal.SIGINT, 30.0), (signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0))


@dataclass
class Sample:
    t_s: float  # since the crawl process started
    rss_mb: float
    pages: int


@dataclass
class LongRun:
    variant: str
    command: list[str]
    returncode: int | None = None
    stopped: bool = False  # reached --max-seconds
    wall_s: float = 0.0
    pages: int = 0
    addons: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    @property
    def peak_rss_mb(self) -> float:
        return max((s.rss_mb for s in self.samples), default=float("nan"))

    @property
    def crawl_s(self) -> float:
        """Seconds until the crawl ended, or until it was told to stop."""
        return self.samples[-1].t_s if self.stopped and self.samples else self.wall_s

    @property
    def pages_per_s(self) -> float:
        """Pages written per second over ``crawl_s`` (its shutdown left out)."""
        pages = self.samples[-1].pages if self.stopped and self.samples else self.pages
        return pages / self.crawl_s if self.crawl_s else 0.0

    def rss_at(self, t_s: float) -> float | None:
        """RSS of the first sample at or after ``t_s`` seconds, None if the run ended sooner."""
        return next((s.rss_mb for s in self.samples if s.t_s >= t_s), None)

    def peak_after(self, t_s: float) -> float | None:
        later = [s.rss_mb for s in self.samples if s.t_s >= t_s]
        return max(later) if later else None


class ManifestCounter:
    """Counts the lines of a growing file, reading only what was appended since last time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                chunk = file.read()
        except FileNotFoundError:
            return self.lines
        # Only whole lines: a line still being written is counted once its newline lands.
        whole = chunk.rfind(b"\n") + 1
        self.lines += chunk.count(b"\n", 0, whole)
        self.offset += whole
        return self.lines


def tree_rss_mb(proc: psutil.Process) -> float:
    """RSS of a process and all its descendants, in MiB (0 once it has gone)."""
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue  # ended between listing and reading
    return total / (1024 * 1024)


def sample_crawl(
    run: LongRun, pages_dir: Path, log_path: Path, max_seconds: float, interval: float
) -> None:
    """Start ``run.command`` in the example project and sample it until it ends."""
    counter = ManifestCounter(pages_dir / MANIFEST_NAME)
    start = time.monotonic()
    with log_path.open("w") as out:
        proc = subprocess.Popen(
            run.command,
            cwd=PROJECT_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so the stop signals reach only the crawl
        )
        watched = psutil.Process(proc.pid)
        next_tick = start
        while proc.poll() is None:
            now = time.monotonic() - start
            run.samples.append(Sample(round(now, 3), tree_rss_mb(watched), counter.count()))
            if now >= max_seconds:
                # Sampling ends here: the curve is the crawl's, not its shutdown's.
                run.stopped = True
                stop_group(proc, STOP_STEPS)
                break
            # Ticks on a fixed grid, however long a sample took.
            next_tick += interval
            time.sleep(max(0.0, next_tick - time.monotonic()))
        run.returncode = proc.wait()
    run.wall_s = round(time.monotonic() - start, 3)
    run.pages = counter.count()


def run_variant(
    variant: str, urls_file: Path, args: argparse.Namespace, tmp: Path, raw_dir: Path
) -> LongRun:
    log_path = raw_dir / f"longlist-{variant}.log"
    pages_dir = tmp / f"pages-{variant}"
    settings = {
        **COMMON_SETTINGS,
        "ASYNCFETCH_PAGES_DIR": str(pages_dir),
        "CONCURRENT_REQUESTS": str(args.concurrency),
        "CONCURRENT_REQUESTS_PER_DOMAIN": str(args.concurrency),
        **VARIANTS[variant].settings,
    }
    run = LongRun(variant, pages_command(urls_file, settings))
    sample_crawl(run, pages_dir, log_path, args.max_seconds, args.interval)
    log_text = log_path.read_text(errors="replace")
    run.stats = parse_stats(log_text)
    run.addons = enabled_addons(log_text)
    if (run.addons is not None and "scrapy_asyncfetch" in run.addons) != VARIANTS[variant].addon:
        print(f"WARNING {variant}: enabled add-ons {run.addons!r}", file=sys.stderr)
    return run


def _md_row(run: LongRun) -> list[str]:
    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    end = f"stopped, exit {run.returncode} at {run.wall_s:.0f} s" if run.stopped else "finished"
    end += f" ({run.stats.get('finish_reason', 'no stats')})"
    return [
        run.variant,
        f"{run.pages:,}",
        f"{run.crawl_s:.0f}",
        f"{run.pages_per_s:,.0f}",
        mb(run.rss_at(10.0)),
        mb(run.rss_at(FLAT_FROM_S)),
        mb(run.peak_after(FLAT_FROM_S)),
        mb(run.peak_rss_mb),
        end,
    ]


def markdown(data: dict[str, Any], runs: list[LongRun]) -> str:
    config = data["config"]
    headers = [
        "variant",
        "pages written",
        "crawl s (to its end or stop)",
        "pages/s",
        "RSS MB at 10 s",
        f"at {FLAT_FROM_S:.0f} s",
        f"peak after {FLAT_FROM_S:.0f} s",
        "peak",
        "end",
    ]
    lines = [
        "# Long URL list: memory over a crawl",
        "",
        f"Generated {data['generated_at']} by `{config['command']}`: {config['urls']:,} URLs, "
        f"C={config['concurrency']}, latency {config['latency']}, a run still going after "
        f"{config['max_seconds']:.0f} s is stopped. RSS: the crawl process and its children, "
        f"sampled every {config['interval']:g} s. Target for the add-on: under "
        f"{RSS_TARGET_MB:.0f} MB, flat from {FLAT_FROM_S:.0f} s on.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
        *("| " + " | ".join(_md_row(run)) + " |" for run in runs),
    ]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, runs: list[LongRun]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["variant", "t_s", "rss_mb", "pages"])
        for run in runs:
            writer.writerows([run.variant, s.t_s, f"{s.rss_mb:.1f}", s.pages] for s in run.samples)


def plot(path: Path, runs: list[LongRun], title: str) -> None:
    import matplotlib  # noqa: PLC0415 - only when a chart is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (by_pages, by_time) = plt.subplots(1, 2, figsize=(12, 5))
    for run in runs:
        pages = [s.pages for s in run.samples]
        rss = [s.rss_mb for s in run.samples]
        by_pages.plot(pages, rss, label=run.variant)
        by_time.plot([s.t_s for s in run.samples], rss, label=run.variant)
    for ax, xlabel in ((by_pages, "pages fetched (written)"), (by_time, "seconds")):
        ax.axhline(RSS_TARGET_MB, color="k", linestyle="--", linewidth=1, label="150 MB")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("RSS MB")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.longlist",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--urls", type=int, default=1_000_000, help="lines in the URL file")
    p.add_argument("--max-seconds", type=float, default=180.0, help="stop a crawl after this")
    p.add_argument("--variants", default="stock,addon", help=f"from {','.join(VARIANTS)}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/longlist"))
    p.add_argument("--concurrency", type=int, default=100, help="CONCURRENT_REQUESTS")
    p.add_argument("--latency", type=LatencySpec.parse, default=LatencySpec.parse("fixed:0.01"))
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out: Path = args.out if args.out.is_absolute() else REPO / args.out
    raw_dir = out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "command": " ".join(["python -m benchmarks.longlist", *argv]),
            "urls": args.urls,
            "max_seconds": args.max_seconds,
            "variants": args.variants,
            "concurrency": args.concurrency,
            "latency": str(args.latency),
            "interval": args.interval,
        },
        "machine": machine_info(REPO),
    }
    runs: list[LongRun] = []
    with (
        tempfile.TemporaryDirectory(prefix="asyncfetch-longlist-") as tmp_name,
        ServerHandle(
            latency=args.latency,
            body_size=4096,
            error_rate=0.0,
            workers=1,
            cwd=REPO,
            log_path=raw_dir / "server-longlist.log",
        ) as server,
    ):
        tmp = Path(tmp_name)
        urls_file = tmp / "urls.txt"
        write_url_file(urls_file, server.base_url, args.urls)
        for variant in args.variants:
            run = run_variant(variant, urls_file, args, tmp, raw_dir)
            runs.append(run)
            print(
                f"{variant}: {run.pages:,} pages in {run.wall_s:.0f} s, peak RSS "
                f"{run.peak_rss_mb:.0f} MB, {'stopped' if run.stopped else 'finished'}",
                flush=True,
            )
    data["runs"] = [
        {**asdict(run), "peak_rss_mb": run.peak_rss_mb, "pages_per_s": run.pages_per_s}
        for run in runs
    ]
    (out / "longlist.json").write_text(json.dumps(data, indent=2, default=repr) + "\n")
    write_csv(out / "longlist.csv", runs)
    report = markdown(data, runs)
    (out / "longlist.md").write_text(report)
    if not args.no_plot:
        title = f"{args.urls:,} URLs, C={args.concurrency}, latency {args.latency}"
        plot(out / "longlist.png", runs, title)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
