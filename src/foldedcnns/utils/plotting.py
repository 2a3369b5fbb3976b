"""Figures for reports: bare matplotlib Figures (Agg canvas, no pyplot state), saved atomically."""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from foldedcnns.utils.atomic import atomic_save

DPI = 120


def new_axes(figsize: tuple[float, float] = (8, 5)) -> tuple[Figure, Axes]:
    """A figure with one set of axes; needs no display and touches no global pyplot state."""
    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | Path, *, dpi: int = DPI) -> Path:
    """Lay out ``fig`` and write it as a PNG at ``path`` atomically."""
    fig.tight_layout()
    path = Path(path)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return path
