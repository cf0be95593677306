"""Run the politeness benchmark: ``python -m benchmarks.politeness --out DIR`` (repo root).

For each round, each mix (and, for ``faults``, each arrangement of its bad URLs), each
variant in turn: start the mix's server, crawl it with the example project in a fresh
subprocess, collect both sides. Writes ``DIR/results.json`` (after every run),
``DIR/results.md``, ``DIR/politeness.png``, and every run's logs to ``DIR/raw/``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.machine import machine_info
from benchmarks.politeness.crawl import REPO, RunSpec, run_one
from benchmarks.politeness.mixes import FAULT_ARRANGEMENTS, MIX_NAMES, build_mix
from benchmarks.politeness.plot import summary_chart
from benchmarks.politeness.report import (
    Record,
    crawl_seconds,
    evaluate_targets,
    markdown,
    summarize,
)
from benchmarks.politeness.variants import DEFAULT_VARIANTS, VARIANTS

PLOT_NAME = "politeness.png"


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {allowed}")
        return names

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.politeness",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/politeness"), help="output directory"
    )
    p.add_argument("--rounds", type=int, default=1, help="runs of every mix and variant")
    p.add_argument(
        "--mixes",
        type=_names(MIX_NAMES),
        default=list(MIX_NAMES),
        help="comma-separated subset of " + ",".join(MIX_NAMES),
    )
    p.add_argument(
        "--variants",
        type=_names(tuple(VARIANTS)),
        default=list(DEFAULT_VARIANTS),
        help="comma-separated subset of " + ",".join(VARIANTS),
    )
    p.add_argument(
        "--arrangements",
        type=_names(FAULT_ARRANGEMENTS),
        default=list(FAULT_ARRANGEMENTS),
        help="of the faults mix's bad URLs: spread evenly, or all at the end",
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiply URL counts (smoke tests)")
    p.add_argument("--timeout", type=float, default=600.0, help="hard limit per crawl, s")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> list[RunSpec]:
    """Every run, in order: round, mix, arrangement, variant."""
    runs = []
    for round_ in range(1, args.rounds + 1):
        for mix_name in args.mixes:
            mix = build_mix(mix_name, args.scale)
            arrangements = args.arrangements if mix_name == "faults" else mix.arrangements
            for arrangement in arrangements:
                for variant in args.variants:
                    spec = RunSpec(
                        mix, arrangement, VARIANTS[variant], round_, args.scale, args.timeout
                    )
                    runs.append(spec)
    return runs


def _progress(i: int, total: int, record: Record) -> str:
    hosts = " ".join(
        f"{name}:{h['pages']}p/{h['429'] + h['503']}r/{h['busiest']}b"
        for name, h in record["hosts"].items()
    )
    flag = " TIMEOUT" if record["timed_out"] else ""
    return (
        f"[{i}/{total}] {record['run_id']}: {crawl_seconds(record):.1f} s, "
        f"{record['pages']}/{record['good_urls']} pages, {record['refused']} 429/503 "
        f"({hosts}){flag}"
    )


def _write_json(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / ".gitignore").write_text("*\n")  # logs are for reading, not for committing
    runs = plan(args)
    results: dict[str, Any] = {
        "config": {
            "command": "python -m benchmarks.politeness " + shlex.join(argv or sys.argv[1:]),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "rounds": args.rounds,
            "mixes": args.mixes,
            "variants": args.variants,
            "arrangements": args.arrangements,
            "scale": args.scale,
            "timeout_s": args.timeout,
        },
        "machine": machine_info(REPO),
        "runs": [],
    }
    print(f"{len(runs)} runs; results in {args.out}", flush=True)
    start = time.monotonic()
    for i, spec in enumerate(runs, 1):
        record = run_one(spec, raw)
        results["runs"].append(record)
        _write_json(args.out / "results.json", results)
        print(_progress(i, len(runs), record), flush=True)
    summaries = summarize(results["runs"])
    results["medians"] = [
        {"mix": m, "arrangement": a, "variant": v, **s} for (m, a, v), s in summaries.items()
    ]
    results["targets"] = [t.as_dict() for t in evaluate_targets(summaries, args.scale)]
    results["total_seconds"] = round(time.monotonic() - start, 1)
    _write_json(args.out / "results.json", results)
    (args.out / "results.md").write_text(markdown(results, summaries))
    summary_chart(summaries, args.out / PLOT_NAME)
    print(f"done in {results['total_seconds']:.0f} s: {args.out / 'results.md'}")
    return 0
