"""Medians over rounds, the targets, and results.md."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from benchmarks.politeness.mixes import build_mix, limited_ideal_seconds
from benchmarks.politeness.variants import VARIANTS

Record = dict[str, Any]
Summary = dict[str, Any]
GroupKey = tuple[str, str, str]  # mix, arrangement, variant

_HOST_METRICS = ("pages", "lost", "requests", "429", "503", "busiest", "last_page_s")
_CLIENT_STATS = ("retry/count", "retry/max_reached")
#: Limited mix targets: finish within this factor of the ideal, plus the slack.
LIMITED_TIME_FACTOR, LIMITED_TIME_SLACK = 1.2, 5.0
#: At most this share of the 429/503 that stock provokes.
LIMITED_REFUSED_SHARE = 1 / 3
#: Faults mix target: at most this factor of stock's time.
FAULTS_TIME_FACTOR = 0.8


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [v for v in values if isinstance(v, int | float)]
    return statistics.median(present) if present else None


def crawl_seconds(record: Record) -> float:
    """Time to finish: Scrapy's elapsed_time_seconds, or the subprocess's wall time without it."""
    elapsed = record.get("elapsed_s")
    return float(elapsed) if isinstance(elapsed, int | float) else float(record["wall_s"])


def group_key(record: Record) -> GroupKey:
    return record["mix"], record["arrangement"], record["variant"]


def summarize(records: list[Record]) -> dict[GroupKey, Summary]:
    """Medians per (mix, arrangement, variant), each metric on its own, in run order."""
    groups: dict[GroupKey, list[Record]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    return {key: _summarize_group(runs) for key, runs in groups.items()}


def _last_page(record: Record) -> float | None:
    """When the last good page was served, on any host (server side)."""
    times = [h["last_page_s"] for h in record["hosts"].values() if h["last_page_s"] is not None]
    return max(times, default=None)


def _summarize_group(runs: list[Record]) -> Summary:
    hosts = list(runs[0]["hosts"])
    async_keys = sorted({k for r in runs for k in r["stats"] if k.startswith("asyncfetch/")})
    return {
        "runs": len(runs),
        "timeouts": sum(r["timed_out"] for r in runs),
        "time_s": _median(crawl_seconds(r) for r in runs),
        "wall_s": _median(r["wall_s"] for r in runs),
        "pages": _median(r["pages"] for r in runs),
        "good_urls": runs[0]["good_urls"],
        "lost": _median(r["lost"] for r in runs),
        "last_page_s": _median(_last_page(r) for r in runs),
        "refused": _median(r["refused"] for r in runs),
        "429": _median(sum(h["429"] for h in r["hosts"].values()) for r in runs),
        "503": _median(sum(h["503"] for h in r["hosts"].values()) for r in runs),
        "finish_reasons": sorted({str(r["finish_reason"]) for r in runs}),
        "client_stats": {k: _median(r["stats"].get(k, 0) for r in runs) for k in _CLIENT_STATS},
        "asyncfetch_stats": {k: _median(r["stats"].get(k) for r in runs) for k in async_keys},
        "hosts": {
            host: {m: _median(r["hosts"][host][m] for r in runs) for m in _HOST_METRICS}
            for host in hosts
        },
    }


@dataclass(frozen=True)
class Target:
    mix: str
    arrangement: str
    variant: str
    name: str
    value: float | None
    limit: float | None

    @property
    def met(self) -> bool | None:
        if self.value is None or self.limit is None:
            return None
        return self.value <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "met": self.met}


def evaluate_targets(summaries: dict[GroupKey, Summary], scale: float) -> list[Target]:
    """The targets, for every add-on variant of the limited and faults mixes."""
    targets: list[Target] = []
    for (mix, arrangement, variant), summary in summaries.items():
        if not VARIANTS[variant].addon:
            continue
        stock = summaries.get((mix, arrangement, "stock"))
        if mix == "limited":
            targets += _limited_targets(arrangement, variant, summary, stock, scale)
        elif mix == "faults":
            limit = None if stock is None else FAULTS_TIME_FACTOR * stock["time_s"]
            name = f"time <= {FAULTS_TIME_FACTOR:g} x stock's"
            targets.append(Target(mix, arrangement, variant, name, summary["time_s"], limit))
    return targets


def _limited_targets(
    arrangement: str, variant: str, summary: Summary, stock: Summary | None, scale: float
) -> list[Target]:
    ideal = limited_ideal_seconds(scale)
    time_limit = LIMITED_TIME_FACTOR * ideal + LIMITED_TIME_SLACK
    refused_limit = None if stock is None else LIMITED_REFUSED_SHARE * stock["refused"]
    rows = [
        ("every page written (URLs lost <= 0)", summary["lost"], 0.0),
        ("429/503 <= 1/3 of stock's", summary["refused"], refused_limit),
        (
            f"time <= {LIMITED_TIME_FACTOR:g} x {ideal:g} s + {LIMITED_TIME_SLACK:g} s",
            summary["time_s"],
            time_limit,
        ),
    ]
    return [Target("limited", arrangement, variant, *row) for row in rows]


# --- markdown ---------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "met" if value else "**missed**"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _fmt_stat(value: Any) -> str:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return _fmt(value, 0 if whole else 1)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _mix_keys(summaries: dict[GroupKey, Summary], mix: str) -> list[GroupKey]:
    return [key for key in summaries if key[0] == mix]


def _label(key: GroupKey, arrangements: set[str]) -> list[str]:
    return [key[1], key[2]] if len(arrangements) > 1 else [key[2]]


def _main_table(summaries: dict[GroupKey, Summary], keys: list[GroupKey]) -> list[str]:
    arrangements = {k[1] for k in keys}
    first = ["arrangement", "variant"] if len(arrangements) > 1 else ["variant"]
    header = [*first, "time s", "last page s", "pages", "URLs lost", "429", "503", "retries"]
    header += ["gave up", "timeouts", "finish"]
    rows = []
    for key in keys:
        s = summaries[key]
        rows.append(
            [
                *_label(key, arrangements),
                _fmt(s["time_s"], 1) + (" (timeout)" if s["timeouts"] else ""),
                _fmt(s["last_page_s"], 1),
                f"{_fmt(s['pages'])} / {_fmt(s['good_urls'])}",
                _fmt(s["lost"]),
                _fmt(s["429"]),
                _fmt(s["503"]),
                _fmt(s["client_stats"]["retry/count"]),
                _fmt(s["client_stats"]["retry/max_reached"]),
                f"{s['timeouts']} / {s['runs']}",
                ", ".join(s["finish_reasons"]),
            ]
        )
    return _table(header, rows)


def _host_table(summaries: dict[GroupKey, Summary], keys: list[GroupKey]) -> list[str]:
    arrangements = {k[1] for k in keys}
    first = ["arrangement", "variant"] if len(arrangements) > 1 else ["variant"]
    header = [*first, "host", "pages", "lost", "requests", "429", "503", "busiest"]
    header.append("last page s")
    rows = []
    for key in keys:
        for host, h in summaries[key]["hosts"].items():
            rows.append(
                [
                    *_label(key, arrangements),
                    host,
                    _fmt(h["pages"]),
                    _fmt(h["lost"]),
                    _fmt(h["requests"]),
                    _fmt(h["429"]),
                    _fmt(h["503"]),
                    _fmt(h["busiest"]),
                    _fmt(h["last_page_s"], 1),
                ]
            )
    return _table(header, rows)


def _targets_table(targets: list[Target], mix: str) -> list[str]:
    rows = [
        [t.arrangement, t.variant, t.name, _fmt(t.value, 1), _fmt(t.limit, 1), _fmt(t.met)]
        for t in targets
        if t.mix == mix
    ]
    if not rows:
        return []
    header = ["arrangement", "variant", "target", "value", "limit", "result"]
    return ["", "Targets (add-on variants):", "", *_table(header, rows)]


def _asyncfetch_table(summaries: dict[GroupKey, Summary], keys: list[GroupKey]) -> list[str]:
    keys = [k for k in keys if summaries[k]["asyncfetch_stats"]]
    stat_names = sorted({n for k in keys for n in summaries[k]["asyncfetch_stats"]})
    if not stat_names:
        return []
    arrangements = {k[1] for k in keys}
    header = ["stat", *("/".join(reversed(_label(k, arrangements))) for k in keys)]
    rows = [
        [name, *(_fmt_stat(summaries[k]["asyncfetch_stats"].get(name)) for k in keys)]
        for name in stat_names
    ]
    summary = "<details><summary>asyncfetch/* stats (medians)</summary>"
    return ["", summary, "", *_table(header, rows), "", "</details>"]


def _mix_section(
    mix_name: str, summaries: dict[GroupKey, Summary], targets: list[Target], scale: float
) -> list[str]:
    mix = build_mix(mix_name, scale)
    keys = _mix_keys(summaries, mix_name)
    settings = ", ".join(f"`{k}={v}`" for k, v in mix.settings.items()) or "the project's"
    lines = [f"## {mix.name}: {mix.summary}", ""]
    lines += [f"- {host.describe()}" for host in mix.hosts]
    lines += [f"- {note}" for note in mix.notes]
    lines += ["", f"Crawl settings of this mix: {settings}.", ""]
    if mix_name == "limited":
        ideal = limited_ideal_seconds(scale)
        lines += [f"Ideal: {mix.host('A').pages} pages of A at 20 req/s = {ideal:g} s.", ""]
    lines += _main_table(summaries, keys)
    lines += ["", "Per host (server side, except pages and lost):", ""]
    lines += _host_table(summaries, keys)
    lines += _targets_table(targets, mix_name)
    lines += _asyncfetch_table(summaries, keys)
    return [*lines, ""]


def markdown(results: dict[str, Any], summaries: dict[GroupKey, Summary]) -> str:
    config, machine = results["config"], results["machine"]
    targets = [Target(**{k: v for k, v in t.items() if k != "met"}) for t in results["targets"]]
    lines = [
        "# Politeness benchmark",
        "",
        f"`{config['command']}`, {config['started']}; rounds {config['rounds']}, scale "
        f"{config['scale']:g}; git {machine.get('git_commit')}; {machine.get('cpu_model')}, "
        f"{machine.get('logical_cores')} cores, load average at start "
        f"{', '.join(f'{x:.2f}' for x in machine.get('load_average_at_start', ()))}.",
        "",
        "Time: Scrapy's `elapsed_time_seconds` (spider opened to closed). Pages: lines of the "
        "run's manifest.jsonl for good URLs. 429/503, requests, busiest (most requests in "
        "service at once) and last page (last 200 of a good page, seconds after the crawl's "
        "first request; in the main table the latest of all hosts): counted by the servers, "
        "bad URLs included. Retries and gave up: "
        "Scrapy's `retry/count` and `retry/max_reached`. Medians over rounds.",
        "",
        "Variants: "
        + "; ".join(f"`{n}`: {VARIANTS[n].description}" for n in config["variants"])
        + ".",
        "",
    ]
    for mix_name in config["mixes"]:
        lines += _mix_section(mix_name, summaries, targets, config["scale"])
    return "\n".join(lines)
