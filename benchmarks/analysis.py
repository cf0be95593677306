"""Turn raw runs into medians per configuration and check them against the issue's targets.

Pure data in, data out (JSON-friendly dicts), so results.json, the markdown report and the
charts all read the same figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.scenarios import MAIN_JOB_C

Row = dict[str, Any]

# A server worker busier than this during a run may have limited the client.
SERVER_BUSY_WARNING_PCT = 80.0


def _median(values: list[Any]) -> float | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else None


def med(runs: list[Row], get: Callable[[Row], Any]) -> float | None:
    """Median of one metric over the given runs."""
    return _median([get(r) for r in runs])


def summarize(runs: list[Row]) -> list[Row]:
    """One row per (scenario, runner, C, N) with the median of every metric over rounds.

    Each metric's median is taken on its own (the median pages/s and the median CPU may
    come from different rounds), which is the usual convention and robust to one bad round.
    """
    groups: dict[tuple[str, str, int, int], list[Row]] = {}
    for run in runs:
        key = (run["scenario"], run["runner"], run["concurrency"], run["pages"])
        groups.setdefault(key, []).append(run)

    rows: list[Row] = []
    for (scenario, runner, concurrency, pages), group in groups.items():
        good = [r for r in group if r["status"] == "ok"]
        first = group[0]

        pps = med(good, lambda r: r["pages_per_s"])
        limit = first["limit_pages_per_s"]
        rows.append(
            {
                "scenario": scenario,
                "runner": runner,
                "name": first["name"],
                "label": first["label"],
                "concurrency": concurrency,
                "pages": pages,
                "latency": first["latency"],
                "limit_pages_per_s": limit,
                "rounds_ok": len(good),
                "rounds_failed": len(group) - len(good),
                "pages_per_s": pps,
                "pct_of_limit": 100 * pps / limit if pps is not None and limit else None,
                "wall_s": med(good, lambda r: r["result"]["wall_s"]),
                "cpu_s": med(good, lambda r: r["result"]["cpu_s"]),
                "cpu_s_per_1000_pages": med(good, lambda r: r["cpu_s_per_1000_pages"]),
                "cpu_user_s_per_1000_pages": med(good, lambda r: r["cpu_user_s_per_1000_pages"]),
                "cpu_sys_s_per_1000_pages": med(good, lambda r: r["cpu_sys_s_per_1000_pages"]),
                "pages_per_cpu_s": med(good, lambda r: r["pages_per_cpu_s"]),
                "peak_rss_mb": med(good, lambda r: r["result"]["peak_rss_mb"]),
                "pages_ok": med(good, lambda r: r["result"]["pages_ok"]),
                "errors": med(good, lambda r: r["result"]["errors"]),
                "server_busy_pct_max": max(
                    (r["server_busy_pct"] for r in good if r["server_busy_pct"] is not None),
                    default=None,
                ),
                "failures": [r["error"] for r in group if r["status"] != "ok"],
            }
        )
    return rows


def find(rows: list[Row], scenario: str, runner: str, concurrency: int | None = None) -> Row | None:
    """The row of one runner in one scenario, at concurrency C when the scenario has several."""
    for row in rows:
        if (
            row["scenario"] == scenario
            and row["runner"] == runner
            and row["rounds_ok"]
            and concurrency in (None, row["concurrency"])
        ):
            return row
    return None


@dataclass(frozen=True)
class Target:
    check: str
    metric: str  # key of a summary row
    numerator: str  # runner key
    denominator: str | None  # runner key, "limit", or None for an absolute value
    op: str  # ">=", "<=" or "<"
    threshold: float
    sources: tuple[str, ...]  # scenarios to take the figures from, first available wins
    unit: str = "x"
    concurrency: int | None = None  # for scenarios run at several C (main-job)


# From issue 5. The CPU and memory checks use the scenarios designed for them when they ran
# (zero latency for CPU, 100,000 pages for memory) and fall back to the targets runs.
TARGETS = (
    Target("7 pages/s vs physical limit", "pages_per_s", "7", "limit", ">=", 0.85, ("targets",)),
    Target("7 vs 4 (stock Scrapy) pages/s", "pages_per_s", "7", "4", ">=", 2.0, ("targets",)),
    Target("7 vs 5 (tuned Scrapy) pages/s", "pages_per_s", "7", "5", ">=", 1.4, ("targets",)),
    Target("7 vs 6 (aiohttp handler) pages/s", "pages_per_s", "7", "6", ">=", 1.3, ("targets",)),
    Target(
        "7 vs 5 pages per CPU-second", "pages_per_cpu_s", "7", "5", ">=", 1.4, ("cpu", "targets")
    ),
    Target("7 vs 5 peak RSS", "peak_rss_mb", "7", "5", "<=", 1.1, ("memory", "targets")),
    Target("7 peak RSS", "peak_rss_mb", "7", None, "<", 250.0, ("memory", "targets"), "MB"),
    # From issue 12: the pages job (9) against the minimal spider with the add-on (7).
    *(
        target
        for c in MAIN_JOB_C
        for target in (
            Target(
                f"9 vs 7 pages/s, C={c}",
                "pages_per_s",
                "9",
                "7",
                ">=",
                0.8,
                ("main-job",),
                concurrency=c,
            ),
            Target(
                f"9 vs 7 CPU per page, C={c}",
                "cpu_s_per_1000_pages",
                "9",
                "7",
                "<=",
                1.3,
                ("main-job",),
                concurrency=c,
            ),
        )
    ),
)


def _compare(value: float, op: str, threshold: float) -> bool:
    if op == ">=":
        return value >= threshold
    if op == "<=":
        return value <= threshold
    return value < threshold


def evaluate_targets(rows: list[Row]) -> list[Row]:
    """PASS/FAIL per target, or n/a when the runs it needs are missing. Never raises."""
    results: list[Row] = []
    for target in TARGETS:
        value: float | None = None
        source = None
        for scenario in target.sources:
            top = find(rows, scenario, target.numerator, target.concurrency)
            if top is None or top[target.metric] is None:
                continue
            if target.denominator is None:
                value = top[target.metric]
            elif target.denominator == "limit":
                limit = top["limit_pages_per_s"]
                value = top[target.metric] / limit if limit else None
            else:
                bottom = find(rows, scenario, target.denominator, target.concurrency)
                if bottom is not None and bottom[target.metric]:
                    value = top[target.metric] / bottom[target.metric]
            if value is not None:
                source = scenario
                break
        status = "n/a" if value is None else _status(value, target)
        results.append(
            {
                "check": target.check,
                "value": value,
                "target": f"{target.op} {target.threshold:g}"
                + (target.unit if target.unit == "x" else f" {target.unit}"),
                "unit": target.unit,
                "source": source,
                "status": status,
            }
        )
    return results


def _status(value: float, target: Target) -> str:
    return "PASS" if _compare(value, target.op, target.threshold) else "FAIL"


def server_check(rows: list[Row]) -> Row:
    """The busiest a server worker got in any run, to show the server did not set the pace."""
    busiest = max(
        (r for r in rows if r["server_busy_pct_max"] is not None),
        key=lambda r: r["server_busy_pct_max"],
        default=None,
    )
    if busiest is None:
        return {"max_busy_pct": None, "where": None, "saturated": None}
    return {
        "max_busy_pct": busiest["server_busy_pct_max"],
        "where": f"{busiest['scenario']} {busiest['name']} C={busiest['concurrency']}",
        "saturated": busiest["server_busy_pct_max"] >= SERVER_BUSY_WARNING_PCT,
    }
