"""Plots of analysis results."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from foldedcnns.analysis.report import IntensityRow
from foldedcnns.utils.plotting import new_axes, save_figure


def plot_intensity(rows: Sequence[IntensityRow], path: str | Path, ridge: float | None = None) -> Path:
    """Arithmetic intensity vs fold, one line per task; compound models as a marker at x = 0."""
    by_task: dict[str, list[IntensityRow]] = defaultdict(list)
    for row in rows:
        by_task[row.task].append(row)
    fig, ax = new_axes((8, 5))
    for task, task_rows in by_task.items():
        folded = sorted((r for r in task_rows if r.mode != "Compound"), key=lambda r: r.fold)
        line = ax.plot([r.fold for r in folded], [r.arithmetic_intensity for r in folded], marker="o", label=task)
        for r in task_rows:
            if r.mode == "Compound":
                ax.scatter([0], [r.arithmetic_intensity], marker="x", color=line[0].get_color())
    if ridge:
        ax.axhline(ridge, linestyle="--", color="grey", label=f"ridge point {ridge:.0f} FLOP/B")
    ax.set_xlabel("fold f (x at 0: compound-scaled baseline)")
    ax.set_ylabel("arithmetic intensity (FLOP/byte)")
    batch = rows[0].batch_size if rows else 0
    ax.set_title(f"Arithmetic intensity, batch {batch} images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
