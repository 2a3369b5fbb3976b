"""Figures for reports: bare matplotlib Figures (Agg canvas, no pyplot state), saved atomically.

Every figure the project draws is laid out by matplotlib's constrained layout (room for titles, tick
labels, axis labels and outside legends) and sized from the number of items it shows, and labels that
name things (backends, tasks) sit on a horizontal-bar axis where each gets a row of its own instead of
sharing an x axis where long names would print over each other. :func:`overlapping_text` lists the text
of a rendered figure that overlaps other text or leaves the canvas: the tests hold every plot to an
empty list with long names and many items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from foldedcnns.utils.atomic import atomic_save

DPI = 120
BAR_INCHES = 0.12  # height of one bar of grouped horizontal bars: room for its value label
BAR_FILL = 0.8  # share of a row its bars fill
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "p", "h")
LINESTYLES = ("-", "--", ":", "-.")
SLACK_PX = 0.5  # text boxes may touch by this much (anti-aliasing), not overlap


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure with constrained layout; needs no display and touches no global pyplot state."""
    return Figure(figsize=figsize, layout="constrained")


def new_axes(figsize: tuple[float, float] = (8, 5)) -> tuple[Figure, Axes]:
    """A figure (:func:`new_figure`) with one set of axes."""
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: str | Path, *, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (laid out first when it has no layout engine)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    return path


def bars_height(rows: int, series: int, *, minimum: float, extra: float = 1.3) -> float:
    """Figure height (inches) for :func:`grouped_barh` with ``rows`` labels of ``series`` bars each, plus
    ``extra`` for titles, ticks and the axis label."""
    return max(minimum, extra + BAR_INCHES * max(2, series) / BAR_FILL * rows)


def line_style(index: int, count: int) -> dict[str, Any]:
    """Colour, marker and line style of line ``index`` of ``count``: distinct for up to 20 lines (colours
    from tab10, or tab20 beyond 10), and lines that coincide stay told apart by marker and dash."""
    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return {"color": cmap(index % cmap.N), "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index % len(LINESTYLES)]}


def grouped_barh(ax: Axes, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None], Any]], *,
                 value_format: str = "{:,.0f}", fontsize: float = 8) -> None:
    """One row per label (top to bottom in order), one bar per series in each row, the value printed at
    the end of each bar; ``series`` is (legend label, values with None for a missing bar, colour).
    The x axis is widened so the printed values stay inside the axes."""
    height = BAR_FILL / max(1, len(series))
    top = 0.0
    for si, (name, values, colour) in enumerate(series):
        ys = [i + (si - (len(series) - 1) / 2) * height for i in range(len(labels))]
        kept = [(y, v) for y, v in zip(ys, values, strict=True) if v is not None]
        bars = ax.barh([y for y, _ in kept], [v for _, v in kept], height=height, color=colour, label=name)
        ax.bar_label(bars, labels=[value_format.format(v) for _, v in kept], padding=2, fontsize=fontsize - 1)
        top = max([top, *(v for _, v in kept)])
    ax.set_yticks(range(len(labels)), labels, fontsize=fontsize)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first label on top
    ax.set_xlim(0, top * 1.22 if top > 0 else 1.0)
    ax.grid(alpha=0.3, axis="x")


def _drawn_tick_labels(axis: Axis) -> Iterator[Text]:
    for tick in axis._update_ticks():  # the ticks inside the view limits, the ones drawn
        for label in (tick.label1, tick.label2):
            if label.get_visible() and label.get_text().strip():
                yield label


def text_boxes(fig: Figure) -> list[tuple[str, Bbox]]:
    """(name, window extent in pixels) of every piece of text ``fig`` draws: titles, axis labels, the
    drawn tick labels, offset texts, bar labels and other texts, and each legend as one box. Draws the
    figure on an Agg canvas first, so the layout is the saved one."""
    canvas = FigureCanvasAgg(fig) if not isinstance(fig.canvas, FigureCanvasAgg) else fig.canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    found: list[tuple[str, Any]] = [(f"figure text {t.get_text()!r}", t) for t in fig.texts]
    found += [(f"figure legend {i}", legend) for i, legend in enumerate(fig.legends)]
    for ai, ax in enumerate(a for a in fig.axes if a.get_visible()):
        where = f"axes {ai}"
        found += [(f"{where} title {t.get_text()!r}", t) for t in (ax.title, ax._left_title, ax._right_title)]
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            found += [(f"{where} {name} label {axis.label.get_text()!r}", axis.label),
                      (f"{where} {name} offset {axis.offsetText.get_text()!r}", axis.offsetText)]
            found += [(f"{where} {name} tick {t.get_text()!r}", t) for t in _drawn_tick_labels(axis)]
        found += [(f"{where} text {t.get_text()!r}", t) for t in ax.texts]
        if ax.get_legend() is not None:
            found.append((f"{where} legend", ax.get_legend()))
    boxes = []
    for name, artist in found:
        if not artist.get_visible() or (isinstance(artist, Text) and not artist.get_text().strip()):
            continue
        box = artist.get_window_extent(renderer)
        if box.width > 0 and box.height > 0:
            boxes.append((name, box))
    return boxes


def overlapping_text(fig: Figure) -> list[str]:
    """Each pair of text boxes (:func:`text_boxes`) that overlap, and each box that leaves the canvas;
    empty for a readable figure. Rotated text counts by its axis-aligned box (a conservative test)."""
    boxes = text_boxes(fig)
    canvas = Bbox.from_bounds(0, 0, fig.bbox.width, fig.bbox.height).padded(SLACK_PX)
    problems = [f"{name} leaves the figure" for name, box in boxes
                if not (canvas.contains(box.x0, box.y0) and canvas.contains(box.x1, box.y1))]
    shrunk = [(name, box.padded(-SLACK_PX)) for name, box in boxes]
    for i, (name_a, a) in enumerate(shrunk):
        for name_b, b in shrunk[i + 1:]:
            if a.overlaps(b):
                problems.append(f"{name_a} overlaps {name_b}")
    return problems
