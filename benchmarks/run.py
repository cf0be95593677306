"""Run the benchmark: ``python -m benchmarks.run --out benchmarks/results`` (from the repo root).

For each scenario it starts the local server (its own process), then runs every cell of the
scenario interleaved (A B C ... A B C ...) for ``--rounds`` rounds, each run in a fresh
subprocess. Raw runs, medians, target checks and machine information go to
``OUT/results.json``; tables to ``OUT/results.md``; charts to ``OUT/pages_per_second.png``
and ``OUT/seed.png``; every run's stdout/stderr to ``OUT/raw/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.analysis import Row, evaluate_targets, server_check, summarize
from benchmarks.latency import LatencySpec
from benchmarks.machine import machine_info
from benchmarks.runners import RUNNERS, RunnerSpec
from benchmarks.scenarios import (
    DEFAULT_PAGES,
    DEFAULT_SWEEP_C,
    DEFAULT_SYNC_PAGES,
    SCENARIO_NAMES,
    Cell,
    Scenario,
    ScenarioOptions,
    build_scenarios,
)
from benchmarks.serverctl import ServerHandle

REPO = Path(__file__).resolve().parent.parent
# A rough guess of zero-latency throughput, only used to estimate the duration up front.
_GUESS_ZERO_LATENCY_PPS = 700.0
_GUESS_STARTUP_S = 2.0


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _pages_dest(scenario: str) -> str:
    """The attribute of ``--{scenario}-pages``: argparse turns "main-job" into "main_job"."""
    return scenario.replace("-", "_") + "_pages"


def _name_list(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {allowed}")
        return names

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--scenarios",
        type=_name_list(SCENARIO_NAMES),
        default=list(SCENARIO_NAMES),
        help="comma-separated subset of " + ",".join(SCENARIO_NAMES),
    )
    p.add_argument(
        "--runners",
        type=_name_list(tuple(RUNNERS)),
        default=list(RUNNERS),
        help="comma-separated runner numbers (1-9) to include",
    )
    p.add_argument("--pages", type=int, default=None, help="N for every scenario (smoke tests)")
    for name in SCENARIO_NAMES:
        p.add_argument(
            f"--{name}-pages",
            dest=_pages_dest(name),
            type=int,
            default=None,
            help=f"N for {name} (default {DEFAULT_PAGES[name]:,}; overrides --pages)",
        )
    p.add_argument("--sync-pages", type=int, default=DEFAULT_SYNC_PAGES, help="N cap for runner 1")
    p.add_argument(
        "--sweep-c", type=_int_list, default=DEFAULT_SWEEP_C, help="C values for the sweep"
    )
    p.add_argument(
        "--latency", type=float, default=0.1, help="fixed latency (s) for sweep/seed/targets"
    )
    p.add_argument(
        "--latency-dist",
        type=LatencySpec.parse,
        default=None,
        help="latency distribution instead of --latency, e.g. exp:0.1",
    )
    p.add_argument(
        "--zero-latency",
        type=LatencySpec.parse,
        default=LatencySpec("fixed", (0.0,)),
        help="latency for the cpu and memory scenarios",
    )
    p.add_argument("--body-size", type=int, default=4096, help="bytes per page")
    p.add_argument("--error-rate", type=float, default=0.0, help="fraction of 500 responses")
    p.add_argument("--server-workers", type=int, default=1, help="server processes (SO_REUSEPORT)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between runs")
    p.add_argument(
        "--run-timeout", type=float, default=1800.0, help="seconds before a run is killed"
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def _scenario_options(args: argparse.Namespace, runners: set[str]) -> ScenarioOptions:
    pages = {}
    for name in SCENARIO_NAMES:
        specific = getattr(args, _pages_dest(name))
        pages[name] = specific or args.pages or DEFAULT_PAGES[name]
    return ScenarioOptions(
        latency=args.latency_dist or LatencySpec("fixed", (args.latency,)),
        zero_latency=args.zero_latency,
        pages=pages,
        sweep_c=args.sweep_c,
        sync_pages=args.sync_pages,
        runners=frozenset(runners),
    )


def _import_failure(statement: str) -> str | None:
    """None if ``statement`` runs in a runner's environment, else why not."""
    probe = subprocess.run(
        [sys.executable, "-c", statement],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0:
        return None
    lines = probe.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {probe.returncode}"


def _estimate_seconds(scenarios: list[Scenario], rounds: int, pause: float) -> float:
    total = 0.0
    for scenario in scenarios:
        for cell in scenario.cells:
            limit = cell.limit(scenario.latency) or _GUESS_ZERO_LATENCY_PPS
            total += cell.pages / limit + _GUESS_STARTUP_S + pause
    return total * rounds


def _last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_cell(
    *,
    spec: RunnerSpec,
    cell: Cell,
    scenario: Scenario,
    round_no: int,
    server: ServerHandle,
    args: argparse.Namespace,
    raw_dir: Path,
) -> Row:
    """Run one runner once in a fresh process and return its record."""
    cmd = [
        sys.executable,
        "-m",
        spec.module,
        *spec.args,
        "--base-url",
        server.base_url,
        "--pages",
        str(cell.pages),
        "--concurrency",
        str(cell.concurrency),
    ]
    record: Row = {
        "scenario": scenario.name,
        "round": round_no,
        "runner": spec.key,
        "name": spec.name,
        "label": spec.label,
        "concurrency": cell.concurrency,
        "pages": cell.pages,
        "latency": str(scenario.latency),
        "limit_pages_per_s": cell.limit(scenario.latency),
        "status": "failed",
        "error": None,
        "result": None,
        "pages_per_s": None,
        "cpu_s_per_1000_pages": None,
        "cpu_user_s_per_1000_pages": None,
        "cpu_sys_s_per_1000_pages": None,
        "pages_per_cpu_s": None,
        "server_cpu_s": None,
        "server_busy_pct": None,
    }
    log_path = raw_dir / f"{scenario.name}-r{round_no}-{spec.name}-c{cell.concurrency}.log"
    record["log"] = str(log_path)
    server_before = server.cpu_seconds()
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, check=False, capture_output=True, text=True, timeout=args.run_timeout
        )
    except subprocess.TimeoutExpired as exc:
        record["error"] = f"{spec.name} C={cell.concurrency}: killed after {exc.timeout:.0f}s"
        log_path.write_text(f"$ {' '.join(cmd)}\n[timeout]\n")
        return record
    record["process_wall_s"] = time.perf_counter() - started
    server_after = server.cpu_seconds()
    log_path.write_text(
        f"$ {' '.join(cmd)}\n[exit {proc.returncode}]\n--- stdout\n{proc.stdout}"
        f"--- stderr\n{proc.stderr}"
    )

    result = _last_json_line(proc.stdout)
    if proc.returncode != 0 or result is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        record["error"] = f"{spec.name} C={cell.concurrency}: exit {proc.returncode}: {tail}"
        return record

    record.update(status="ok", result=result)
    ok, wall, cpu = result["pages_ok"], result["wall_s"], result["cpu_s"]
    if wall > 0:
        record["pages_per_s"] = ok / wall
        # Server CPU over the runner's fetching time: the runner's start-up, when the
        # server idles, is included in the CPU window, so this errs on the high side.
        spent = [a - b for a, b in zip(server_after, server_before, strict=True)]
        record["server_cpu_s"] = spent
        record["server_busy_pct"] = 100 * max(spent) / wall if spent else None
    if ok:
        record["cpu_s_per_1000_pages"] = 1000 * cpu / ok
        record["cpu_user_s_per_1000_pages"] = 1000 * result["cpu_user_s"] / ok
        record["cpu_sys_s_per_1000_pages"] = 1000 * result["cpu_sys_s"] / ok
    if cpu > 0:
        record["pages_per_cpu_s"] = ok / cpu
    return record


def _progress(record: Row, rounds: int) -> str:
    head = (
        f"[{record['scenario']} {record['round']}/{rounds}] {record['name']:<25}"
        f" C={record['concurrency']:<4} N={record['pages']:<7,}"
    )
    if record["status"] != "ok":
        return f"{head} FAILED: {record['error']}"
    result = record["result"]
    pps, limit = record["pages_per_s"], record["limit_pages_per_s"]
    share = f" ({100 * pps / limit:.0f}% of {limit:,.0f})" if pps and limit else ""
    busy = record["server_busy_pct"]
    return (
        f"{head} {pps or 0:8,.0f} pages/s{share}  ok={result['pages_ok']} "
        f"err={result['errors']}  cpu={result['cpu_s']:.2f}s  rss={result['peak_rss_mb']:.0f}MB"
        f"  server={busy or 0:.0f}%"
    )


def _write_outputs(out: Path, data: dict[str, Any], plots: bool) -> None:
    from benchmarks.report import markdown  # noqa: PLC0415

    data["summary"] = summarize(data["runs"])
    data["targets"] = evaluate_targets(data["summary"])
    data["server_check"] = server_check(data["summary"])
    (out / "results.json").write_text(json.dumps(data, indent=2, default=repr) + "\n")
    (out / "results.md").write_text(markdown(data))
    if plots:
        from benchmarks.plots import pages_per_second_chart, seed_chart  # noqa: PLC0415

        data["charts"] = [
            name
            for name, draw in (
                ("pages_per_second.png", pages_per_second_chart),
                ("seed.png", seed_chart),
            )
            if draw(data["summary"], out / name)
        ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    out: Path = args.out if args.out.is_absolute() else REPO / args.out
    raw_dir = out / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)

    runners = set(args.runners)
    skipped: list[str] = []
    for statement in sorted({req for k in runners if (req := RUNNERS[k].requires)}):
        reason = _import_failure(statement)
        if reason is not None:
            dropped = sorted(k for k in runners if RUNNERS[k].requires == statement)
            runners -= set(dropped)
            skipped.append(f"runners {','.join(dropped)}: {statement}: {reason}")
            print(f"WARNING: skipping runners {dropped}: {statement!r} failed: {reason}")

    scenarios = build_scenarios(args.scenarios, _scenario_options(args, runners))
    n_runs = sum(len(s.cells) for s in scenarios) * args.rounds
    estimate = _estimate_seconds(scenarios, args.rounds, args.pause)
    print(f"{n_runs} runs in {len(scenarios)} scenario(s); rough estimate {estimate / 60:.0f} min")
    if args.dry_run:
        for scenario in scenarios:
            print(f"  {scenario.name}: {scenario.title}")
            for cell in scenario.cells:
                label = RUNNERS[cell.runner].label
                print(f"    {label:<26} C={cell.concurrency:<4} N={cell.pages:,}")
        return 0

    data: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            **{
                k: (str(v) if isinstance(v, Path | LatencySpec) else v)
                for k, v in vars(args).items()
            },
            "command": " ".join(["python -m benchmarks.run", *argv]),
        },
        "machine": machine_info(REPO),
        "skipped": skipped,
        "scenarios": [
            {
                "name": s.name,
                "title": s.title,
                "latency": str(s.latency),
                "cells": [vars(c) for c in s.cells],
            }
            for s in scenarios
        ],
        "runs": [],
    }

    for scenario in scenarios:
        print(f"\n== {scenario.name}: {scenario.title}")
        with ServerHandle(
            latency=scenario.latency,
            body_size=args.body_size,
            error_rate=args.error_rate,
            workers=args.server_workers,
            cwd=REPO,
            log_path=raw_dir / f"server-{scenario.name}.log",
        ) as server:
            for round_no in range(1, args.rounds + 1):
                for cell in scenario.cells:
                    if not server.alive():
                        raise RuntimeError("the benchmark server died; see its log in raw/")
                    record = run_cell(
                        spec=RUNNERS[cell.runner],
                        cell=cell,
                        scenario=scenario,
                        round_no=round_no,
                        server=server,
                        args=args,
                        raw_dir=raw_dir,
                    )
                    data["runs"].append(record)
                    print(_progress(record, args.rounds), flush=True)
                    time.sleep(args.pause)
            # Keep partial results if a later scenario is interrupted.
            _write_outputs(out, data, plots=False)

    _write_outputs(out, data, plots=not args.no_plots)
    print()
    print((out / "results.md").read_text())
    print(f"Wrote {out / 'results.json'}, {out / 'results.md'}", *data.get("charts", []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
