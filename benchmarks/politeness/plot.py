"""The chart: per mix and variant, time to finish, 429/503 provoked and URLs lost."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; must happen before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from benchmarks.politeness.report import GroupKey, Summary

_PANELS = (
    ("time_s", "time to finish (s)", 1),
    ("refused", "429 + 503 provoked", 0),
    ("lost", "URLs lost", 0),
)
_BAR_AREA = 0.8  # share of each group's width taken by its bars


def _scenario(key: GroupKey) -> str:
    mix, arrangement, _ = key
    return mix if arrangement == "interleaved" else f"{mix}\n({arrangement})"


def _panel(
    ax: Axes, summaries: dict[GroupKey, Summary], metric: str, title: str, digits: int
) -> None:
    scenarios = list(dict.fromkeys(_scenario(k) for k in summaries))
    variants = list(dict.fromkeys(k[2] for k in summaries))
    width = _BAR_AREA / len(variants)
    for i, variant in enumerate(variants):
        xs, ys = [], []
        for key, summary in summaries.items():
            if key[2] == variant and summary[metric] is not None:
                xs.append(scenarios.index(_scenario(key)) - _BAR_AREA / 2 + (i + 0.5) * width)
                ys.append(summary[metric])
        bars = ax.bar(xs, ys, width, label=variant)
        ax.bar_label(bars, labels=[f"{y:,.{digits}f}" for y in ys], fontsize=6, rotation=90)
    ax.set_xticks(range(len(scenarios)), scenarios, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.2)
    ax.grid(True, axis="y", alpha=0.3)


def summary_chart(summaries: dict[GroupKey, Summary], path: Path) -> bool:
    """Grouped bars, one group per mix (and arrangement), one bar per variant."""
    if not summaries:
        return False
    fig, axes = plt.subplots(len(_PANELS), 1, figsize=(10, 10))
    for ax, (metric, title, digits) in zip(axes, _PANELS, strict=True):
        _panel(ax, summaries, metric, title, digits)
    axes[0].legend(fontsize=8, ncols=3)
    fig.suptitle("Politeness: medians per mix and variant", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
