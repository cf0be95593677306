"""Markdown tables (results.md) from the summary rows made by ``benchmarks.analysis``."""

from __future__ import annotations

from typing import Any

from benchmarks.analysis import SERVER_BUSY_WARNING_PCT, Row


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _pps(row: Row) -> str:
    """pages/s with the physical limit and the share of it reached, e.g. "812 (81% of 1,000)"."""
    pps, limit = row["pages_per_s"], row["limit_pages_per_s"]
    if pps is None:
        return "failed"
    if not limit:
        return _num(pps, 0)
    return f"{pps:,.0f} ({row['pct_of_limit']:.0f}% of {limit:,.0f})"


def _cpu_per_page(row: Row) -> str:
    """CPU seconds per 1,000 pages (= ms per page) with its user and system parts."""
    total = row["cpu_s_per_1000_pages"]
    if total is None:
        return "-"
    user, system = row.get("cpu_user_s_per_1000_pages"), row.get("cpu_sys_s_per_1000_pages")
    if user is None or system is None:
        return _num(total, 3)
    return f"{total:.3f} ({user:.3f} + {system:.3f})"


def _table(headers: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def _scenario_table(rows: list[Row]) -> list[str]:
    headers = [
        "runner",
        "C",
        "N",
        "pages/s (of limit)",
        "wall s",
        "CPU s",
        "CPU s / 1k pages (user + sys)",
        "peak RSS MB",
        "ok / errors",
        "server busy % (max)",
        "rounds",
    ]
    lines = []
    for row in sorted(rows, key=lambda r: (r["concurrency"], r["runner"])):
        rounds = str(row["rounds_ok"])
        if row["rounds_failed"]:
            rounds += f" (+{row['rounds_failed']} failed)"
        lines.append(
            [
                row["label"],
                str(row["concurrency"]),
                f"{row['pages']:,}",
                _pps(row),
                _num(row["wall_s"], 2),
                _num(row["cpu_s"], 2),
                _cpu_per_page(row),
                _num(row["peak_rss_mb"], 0),
                f"{_num(row['pages_ok'], 0)} / {_num(row['errors'], 0)}",
                _num(row["server_busy_pct_max"], 0),
                rounds,
            ]
        )
    return _table(headers, lines)


def _targets_table(targets: list[Row]) -> list[str]:
    lines = []
    for t in targets:
        if t["value"] is None:
            value = "-"
        elif t["unit"] == "x":
            value = f"{t['value']:.2f}x"
        else:
            value = f"{t['value']:.0f} {t['unit']}"
        lines.append([t["check"], value, t["target"], t["source"] or "-", f"**{t['status']}**"])
    return _table(["check", "measured", "target", "from scenario", "result"], lines)


def markdown(data: dict[str, Any]) -> str:
    """The whole report. ``data`` is what results.json holds."""
    machine, config = data["machine"], data["config"]
    out = [
        "# scrapy-asyncfetch benchmark results",
        "",
        f"Generated {data['generated_at']} by `{config['command']}`.",
        "",
        f"- Machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores, "
        f"{machine['memory_gib']} GiB; load average at start "
        + " ".join(f"{x:.2f}" for x in machine["load_average_at_start"]),
        f"- Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v),
        f"- Rounds: {config['rounds']} (interleaved); figures are medians over rounds.",
        f"- Server: {config['server_workers']} worker process(es), body {config['body_size']} B,"
        f" error rate {config['error_rate']}",
        "- pages/s = pages fetched OK / wall seconds of the fetching part; "
        "the limit is min(N, C) / mean latency.",
    ]
    if data.get("skipped"):
        out += ["", "**Skipped:** " + "; ".join(data["skipped"])]

    summary: list[Row] = data["summary"]
    for scenario in data["scenarios"]:
        rows = [r for r in summary if r["scenario"] == scenario["name"]]
        if not rows:
            continue
        out += ["", f"## {scenario['name']}: {scenario['title']}", "", *_scenario_table(rows)]
        failures = [f for r in rows for f in r["failures"]]
        if failures:
            out += ["", "Failures:", *(f"- {f}" for f in failures[:10])]

    out += [
        "",
        "## Targets (reported, never asserted)",
        "",
        *_targets_table(data["targets"]),
    ]

    server = data["server_check"]
    if server["max_busy_pct"] is not None:
        verdict = (
            f"**may have limited the client** (>= {SERVER_BUSY_WARNING_PCT:.0f}%): "
            "rerun with more --server-workers"
            if server["saturated"]
            else "far from saturation"
        )
        out += [
            "",
            "## Server check",
            "",
            f"Busiest server worker: {server['max_busy_pct']:.0f}% of one core "
            f"({server['where']}), {verdict}.",
        ]
    return "\n".join(out) + "\n"
