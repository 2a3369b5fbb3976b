"""Benchmark figures: throughput vs batch size per fold, and speedup per task.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state, no GUI),
laid out by constrained layout and sized from the number of tasks (:mod:`foldedcnns.utils.plotting`):
one legend outside the panels, the speedups as horizontal bars with the full task names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter, NullLocator

from foldedcnns.benchmark.records import BenchRecord
from foldedcnns.benchmark.summary import best_configs, summarize
from foldedcnns.errors import DataError
from foldedcnns.utils.plotting import LINESTYLES, MARKERS, bars_height, grouped_barh, new_figure, save_figure

PANEL_SIZE = (4.6, 3.3)  # inches per throughput panel
MAX_COLUMNS = 3
LEGEND_WIDTH = 2.2  # inches beside the panels for the legend
MAX_BATCH_TICKS = 7  # more batch sizes than this: every other one labelled
DPI = 110


def _fold_label(mode_fold: tuple[str, int]) -> str:
    return "compound" if mode_fold[0] == "Compound" else f"f={mode_fold[1]}"


def results_figure(records: Sequence[BenchRecord], title: str | None = None) -> Figure:
    """One panel per model (median throughput vs batch size, a colour per fold, a marker and dash per
    backend and precision), one legend beside them, and below them the best-vs-best speedup of each
    fold per task as horizontal bars."""
    if not records:
        raise DataError("no benchmark records to plot; every configuration was skipped")
    rows = summarize(records)
    models = list(dict.fromkeys(r.model for r in rows))
    variants = list(dict.fromkeys((r.backend, r.precision) for r in rows))
    folds = sorted({(r.mode, r.fold) for r in rows}, key=lambda m: (m[0] == "Compound", m[1]))
    cmap = matplotlib.colormaps["tab10"]
    colors = {mf: cmap(i % 10) for i, mf in enumerate(folds)}
    best = [b for b in best_configs(records) if b.mode != "Original" and b.speedup is not None]
    keys = sorted({(b.mode, b.fold) for b in best}, key=lambda m: (m[0] == "Compound", m[1]))
    cols = min(MAX_COLUMNS, len(models))
    nrows = math.ceil(len(models) / cols)
    top_height = PANEL_SIZE[1] * nrows
    speed_height = bars_height(len(models), len(keys), minimum=2.5) if keys else 0.0
    fig = new_figure((max(PANEL_SIZE[0] * cols, 7.0) + LEGEND_WIDTH, top_height + speed_height + (0.4 if title else 0)))
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_height, max(speed_height, 1e-3)]) if keys else (fig, None)
    axes = top.subplots(nrows, cols, squeeze=False).ravel()
    batch_sizes = sorted({r.batch_size for r in rows})
    for ax, model in zip(axes, models, strict=False):
        for vi, variant in enumerate(variants):
            for mf in folds:
                pts = sorted((r.batch_size, r.throughput) for r in rows
                             if r.model == model and (r.backend, r.precision) == variant and (r.mode, r.fold) == mf)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[mf],
                            marker=MARKERS[vi % len(MARKERS)], linestyle=LINESTYLES[vi % len(LINESTYLES)])
        _batch_axis(ax, batch_sizes)
        ax.set_title(model, fontsize=9)
        ax.set_ylabel("images/s (median)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(models):]:
        ax.set_visible(False)
    fig.legend(handles=_legend_handles(folds, colors, variants), loc="outside right upper", fontsize=8)
    if bottom is not None:
        _speedup_panel(bottom.subplots(), best, keys, models, colors)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_results(records: Sequence[BenchRecord], path: str | Path, title: str | None = None) -> Path:
    """:func:`results_figure` written as a PNG at ``path``."""
    return save_figure(results_figure(records, title), path, dpi=DPI)


def _batch_axis(ax: Axes, batch_sizes: list[int]) -> None:
    """Log-2 x axis labelled with the batch sizes measured (every other one when there are many)."""
    ax.set_xscale("log", base=2)
    step = 1 if len(batch_sizes) <= MAX_BATCH_TICKS else 2
    shown = batch_sizes[::step]
    ax.set_xticks(shown, [str(b) for b in shown])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(batch_sizes) == 1:
        ax.set_xlim(batch_sizes[0] / 2, batch_sizes[0] * 2)
    ax.set_xlabel("batch size (images)", fontsize=8)


def _legend_handles(folds: list[tuple[str, int]], colors: dict[tuple[str, int], Any],
                    variants: list[tuple[str, str]]) -> list[Line2D]:
    """A colour per fold, a marker and line style per backend and precision."""
    handles = [Line2D([], [], color=colors[mf], linewidth=3, label=_fold_label(mf)) for mf in folds]
    handles += [Line2D([], [], color="gray", marker=MARKERS[vi % len(MARKERS)],
                       linestyle=LINESTYLES[vi % len(LINESTYLES)], label=f"{backend} {precision}")
                for vi, (backend, precision) in enumerate(variants)]
    return handles


def _speedup_panel(ax: Axes, best: Sequence[Any], keys: list[tuple[str, int]], models: list[str],
                   colors: dict[tuple[str, int], Any]) -> None:
    """Best-vs-best speedup of each fold, one row per task (full names), the value at each bar."""
    series = []
    for key in keys:
        values = []
        for model in models:
            match = [b.speedup for b in best if b.model == model and (b.mode, b.fold) == key]
            values.append(match[0] if match else None)
        series.append((_fold_label(key), values, colors[key]))
    grouped_barh(ax, models, series, value_format="{:.2f}x")
    ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8, zorder=0.5)  # behind bars and values
    ax.set_xlabel("speedup: best folded (any backend, precision, batch) / best original", fontsize=8)
    ax.set_title("speedup per task (colour = fold, as in the legend)", fontsize=9)
