"""Plots of analysis results (laid out and checked as :mod:`foldedcnns.utils.plotting` says)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from foldedcnns.analysis.report import IntensityRow
from foldedcnns.utils.plotting import line_style, new_axes, save_figure

COMPOUND_X = 0  # where the compound-scaled baselines sit on the fold axis


def intensity_figure(rows: Sequence[IntensityRow], ridge: float | None = None) -> Figure:
    """Arithmetic intensity vs fold, one line per task (tasks with the same network coincide; their
    markers and dashes differ), compound models as an x at the tick 'compound', the legend beside."""
    by_task: dict[str, list[IntensityRow]] = defaultdict(list)
    for row in rows:
        by_task[row.task].append(row)
    fig, ax = new_axes((9, 5))
    for i, (task, task_rows) in enumerate(by_task.items()):
        style = line_style(i, len(by_task))
        folded = sorted((r for r in task_rows if r.mode != "Compound"), key=lambda r: r.fold)
        ax.plot([r.fold for r in folded], [r.arithmetic_intensity for r in folded], label=task, **style)
        compound = [r.arithmetic_intensity for r in task_rows if r.mode == "Compound"]
        if compound:
            ax.scatter([COMPOUND_X] * len(compound), compound, marker="x", color=style["color"])
    if ridge:
        ax.axhline(ridge, linestyle="--", color="grey", label=f"ridge point {ridge:.0f} FLOP/B")
    folds = sorted({r.fold for r in rows if r.mode != "Compound"})
    has_compound = any(r.mode == "Compound" for r in rows)
    ticks = ([COMPOUND_X] if has_compound else []) + folds
    ax.set_xticks(ticks, (["compound"] if has_compound else []) + [str(f) for f in folds])
    ax.set_xlabel("fold f (x: compound-scaled baseline)" if has_compound else "fold f")
    ax.set_ylabel("arithmetic intensity (FLOP/byte)")
    batch = rows[0].batch_size if rows else 0
    ax.set_title(f"Arithmetic intensity, batch {batch} images")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def plot_intensity(rows: Sequence[IntensityRow], path: str | Path, ridge: float | None = None) -> Path:
    """:func:`intensity_figure` written as a PNG at ``path``."""
    return save_figure(intensity_figure(rows, ridge), path)
