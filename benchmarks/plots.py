"""Charts: pages/s against concurrency (sweep) and the all-runner bar chart (seed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; must happen before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter

from benchmarks.analysis import Row


def pages_per_second_chart(rows: list[Row], path: Path) -> bool:
    """Median pages/s against C for each runner, with the C / latency limit. False if no data."""
    sweep = [r for r in rows if r["scenario"] == "sweep" and r["pages_per_s"] is not None]
    if not sweep:
        return False
    fig, ax = plt.subplots(figsize=(9, 6))
    for runner in sorted({r["runner"] for r in sweep}):
        points = sorted(
            (r["concurrency"], r["pages_per_s"]) for r in sweep if r["runner"] == runner
        )
        label = next(r["label"] for r in sweep if r["runner"] == runner)
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=label)

    limits = sorted(
        {(r["concurrency"], r["limit_pages_per_s"]) for r in sweep if r["limit_pages_per_s"]}
    )
    if limits:
        xs, ys = zip(*limits, strict=True)
        ax.plot(xs, ys, "k--", linewidth=1, label="physical limit min(N, C) / latency")

    ax.set_xscale("log")
    ax.set_yscale("log")
    # Label the C values actually measured rather than powers of ten.
    ax.set_xticks(sorted({r["concurrency"] for r in sweep}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("concurrency C")
    ax.set_ylabel("pages/s (median)")
    ax.set_title(f"pages/s against concurrency, latency {sweep[0]['latency']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def seed_chart(rows: list[Row], path: Path) -> bool:
    """One bar per runner (median pages/s), each labelled with its share of its limit."""
    seed = sorted(
        (r for r in rows if r["scenario"] == "seed" and r["pages_per_s"] is not None),
        key=lambda r: r["runner"],
    )
    if not seed:
        return False
    fig, ax = plt.subplots(figsize=(10, 5.5))
    labels = [
        textwrap.fill(r["label"], 16) + f"\nC={r['concurrency']}, N={r['pages']:,}" for r in seed
    ]
    values = [r["pages_per_s"] for r in seed]
    # The plugin's own bar stands out.
    colors = ["tab:orange" if r["runner"] == "7" else "tab:blue" for r in seed]
    bars = ax.bar(range(len(seed)), values, color=colors)
    for bar, row in zip(bars, seed, strict=True):
        text = f"{row['pages_per_s']:,.0f}"
        if row["pct_of_limit"] is not None:
            text += f"\n{row['pct_of_limit']:.0f}% of limit"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    limit = max((r["limit_pages_per_s"] or 0 for r in seed), default=0)
    if limit:
        ax.axhline(limit, color="k", linestyle="--", linewidth=1, label="limit C / latency")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(seed)), labels, fontsize=7)
    ax.set_ylabel("pages/s (median)")
    ax.set_title(f"All runners, latency {seed[0]['latency']}")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
