"""Benchmark figures: throughput vs batch size per fold, and speedup per task.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state, no GUI).
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

from foldedcnns.benchmark.records import BenchRecord
from foldedcnns.benchmark.summary import best_configs, summarize
from foldedcnns.errors import DataError
from foldedcnns.utils.atomic import atomic_save

PANEL_SIZE = (5.0, 3.6)  # inches per subplot
MAX_COLUMNS = 3
DPI = 110
TITLE_ROOM = 0.97  # fraction of the figure height left to the panels when there is a title
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def plot_results(records: Sequence[BenchRecord], path: str | Path, title: str | None = None) -> Path:
    """One panel per model (median throughput vs batch size, a colour per fold, a marker per backend
    and precision; one legend on the first panel) and a last panel with the best-vs-best speedup of
    each fold per task."""
    if not records:
        raise DataError("no benchmark records to plot; every configuration was skipped")
    rows = summarize(records)
    models = list(dict.fromkeys(r.model for r in rows))
    variants = list(dict.fromkeys((r.backend, r.precision) for r in rows))
    folds = sorted({(r.mode, r.fold) for r in rows}, key=lambda m: (m[0] == "Compound", m[1]))
    cmap = matplotlib.colormaps["tab10"]
    colors = {mf: cmap(i % 10) for i, mf in enumerate(folds)}
    panels = len(models) + 1
    cols = min(MAX_COLUMNS, panels)
    nrows = math.ceil(panels / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    flat = axes.ravel()
    for ax, model in zip(flat, models, strict=False):
        for vi, variant in enumerate(variants):
            for mf in folds:
                pts = sorted((r.batch_size, r.throughput) for r in rows
                             if r.model == model and (r.backend, r.precision) == variant and (r.mode, r.fold) == mf)
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[mf], marker=MARKERS[vi % len(MARKERS)],
                        linestyle=LINESTYLES[vi % len(LINESTYLES)])
        ax.set_xscale("log", base=2)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("batch size (images)")
        ax.set_ylabel("throughput (images/s)")
        ax.grid(alpha=0.3)
    _legend(flat[0], folds, colors, variants)
    _speedup_panel(flat[len(models)], records, models)
    for ax in flat[panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, TITLE_ROOM) if title else None)
    path = Path(path)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return path


def _legend(ax: Axes, folds: list[tuple[str, int]], colors: dict[tuple[str, int], Any],
            variants: list[tuple[str, str]]) -> None:
    """One legend: a colour per fold, a marker and line style per backend and precision."""
    handles = [Line2D([], [], color=colors[mf], linewidth=3,
                      label="compound" if mf[0] == "Compound" else f"f={mf[1]}") for mf in folds]
    handles += [Line2D([], [], color="gray", marker=MARKERS[vi % len(MARKERS)],
                       linestyle=LINESTYLES[vi % len(LINESTYLES)], label=f"{backend} {precision}")
                for vi, (backend, precision) in enumerate(variants)]
    ax.legend(handles=handles, fontsize=6)


def _speedup_panel(ax: Axes, records: Sequence[BenchRecord], models: list[str]) -> None:
    best = [b for b in best_configs(records) if b.mode != "Original" and b.speedup is not None]
    keys = sorted({(b.mode, b.fold) for b in best}, key=lambda m: (m[0] == "Compound", m[1]))
    width = 0.8 / max(1, len(keys))
    for ki, key in enumerate(keys):
        xs, ys = [], []
        for mi, model in enumerate(models):
            match = [b for b in best if b.model == model and (b.mode, b.fold) == key]
            if match:
                xs.append(mi + (ki - (len(keys) - 1) / 2) * width)
                ys.append(match[0].speedup)
        ax.bar(xs, ys, width=width, label="compound" if key[0] == "Compound" else f"f={key[1]}")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([m.split("/")[-1] for m in models], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("speedup (best vs best original)")
    ax.set_title("speedup per task", fontsize=9)
    if keys:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
