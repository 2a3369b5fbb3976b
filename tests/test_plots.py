"""Every figure the project draws is readable at its default size: no text over other text, none off the canvas.

Each plot function is drawn with realistic, crowded data (every game and NoScope task with their long
names, every backend and precision, many batch sizes) and checked by ``overlapping_text``, which collects
the window extents of all titles, axis labels, drawn tick labels, bar labels and legends of the rendered
figure and reports each pair that overlaps. The PNGs are written under pytest's tmp_path (set
``FOLDEDCNNS_PLOT_DIR`` to keep them somewhere to look at).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from foldedcnns.analysis.plots import intensity_figure, plot_intensity
from foldedcnns.analysis.report import default_intensity_tasks, intensity_rows
from foldedcnns.benchmark.plots import plot_results, results_figure
from foldedcnns.benchmark.records import BenchRecord, add_ratios
from foldedcnns.benchmark.runner import BenchRun
from foldedcnns.training.sweep import accuracy_figure, plot_accuracy_vs_fold
from foldedcnns.utils.plotting import overlapping_text, save_figure, text_boxes
from foldedcnns.workflows import demo

TASKS = ("apex/squad_count_v2", "lol/goldnumber-fraction", "lol/goldnumber-int", "lol/timer-minutes",
         "noscope/coral", "noscope/night", "noscope/roundabout", "noscope/taipei", "sot/coin_count-digits_3_4-v2",
         "sot/timer3")
ENGINES = tuple((b, p) for b in ("eager", "channels-last", "compile", "onnxruntime", "openvino", "openvino-streams")
                for p in ("fp32", "bf16", "int8"))


def bench_records(tasks: tuple[str, ...] = TASKS, folds: tuple[int, ...] = (1, 2, 3, 4),
                  batches: tuple[int, ...] = (256, 1024, 4096), engines: tuple[tuple[str, str], ...] = ENGINES[:9],
                  compound: bool = True) -> list[BenchRecord]:
    """Two trials of every configuration, folded models faster, some utilization above 1."""
    rng = random.Random(0)
    records = []
    for trial in (1, 2):
        for task in tasks:
            modes = [("Original" if f == 1 else "Folded", f) for f in folds]
            modes += [("Compound", 1)] if compound and not task.startswith("noscope") else []
            for mode, fold in modes:
                for batch in batches:
                    for backend, precision in engines:
                        tput = 1000 * (1 + fold) * rng.uniform(0.8, 1.2) * batch ** 0.2
                        records.append(BenchRecord(task, trial, batch, mode, fold, tput, tput * 1e8, backend,
                                                   precision, "cpu", batch, utilization=tput * 1e8 / 3e11))
    return add_ratios(records)


def demo_inputs(fold: int = 4) -> tuple[demo.DemoReport, BenchRun]:
    task = "lol/goldnumber-fraction"
    run = BenchRun(bench_records((task,), (1, fold), (1024,), ENGINES, compound=False), [], {}, {})
    rows = [demo.DemoRow(task, 1, 99.2, 100.0, 99.1, 21000.0, 1.0, 2.6e12, 1.96, "openvino-streams int8", "a", 1.0),
            demo.DemoRow(task, fold, 100.0, 100.0, 98.6, 61000.0, 2.9, 1.9e12, 0.6, "openvino int8", "b", 1.0)]
    report = demo.DemoReport(task, fold, False, "cpu", demo.FULL, {"train": 1, "val": 1, "test": 1}, rows,
                             ["eager"], [], {}, {})
    return report, run


def sweep_rows() -> list[dict[str, object]]:
    rng = random.Random(1)
    rows: list[dict[str, object]] = [{"task": t, "fold": f, "test_top1": rng.uniform(90, 100)}
                                     for t in TASKS for f in (1, 2, 3, 4)]
    return [*rows, {"task": "compound/lol/goldnumber-fraction", "fold": 1, "test_top1": 97.0}]


FIGURES: dict[str, Callable[[], Figure]] = {
    "bench": lambda: results_figure(bench_records(), "foldedcnns bench: every task"),
    "bench-batches": lambda: results_figure(bench_records(TASKS[:4], batches=tuple(2**i for i in range(13)),
                                                          engines=ENGINES[:3])),
    "bench-one": lambda: results_figure(bench_records(TASKS[:1], batches=(1024,), engines=ENGINES[:2])),
    "demo": lambda: demo.demo_figure(*demo_inputs()),
    "intensity": lambda: intensity_figure(intensity_rows(default_intensity_tasks(), (1, 2, 3, 4), 1024, 2),
                                          ridge=139.0),
    "sweep": lambda: accuracy_figure(sweep_rows()),
}


@pytest.fixture
def plot_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("FOLDEDCNNS_PLOT_DIR") or tmp_path)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_no_text_of_a_figure_overlaps_other_text(name: str, plot_dir: Path) -> None:
    fig = FIGURES[name]()
    assert overlapping_text(fig) == []
    names = [n for n, _ in text_boxes(fig)]
    assert any(" tick " in n for n in names) and any(" label " in n for n in names)  # the check saw the labels
    assert save_figure(fig, plot_dir / f"{name}.png").stat().st_size > 0


def test_the_overlap_check_finds_labels_printed_over_each_other() -> None:
    fig = Figure(figsize=(3, 2))  # what the demo's throughput panel did: many long labels on a narrow x axis
    ax = fig.add_subplot()
    ax.bar(range(12), range(12))
    ax.set_xticks(range(12), [f"openvino-streams bf16 {i}" for i in range(12)])
    problems = overlapping_text(fig)
    assert "axes 0 x tick 'openvino-streams bf16 0' overlaps axes 0 x tick 'openvino-streams bf16 1'" in problems
    fig = Figure(figsize=(3, 2))  # no layout engine to make room for it
    ax = fig.add_subplot()
    ax.text(0.9, 0.5, "a label that runs past the right edge", transform=ax.transAxes)
    assert any("leaves the figure" in p for p in overlapping_text(fig))


def test_every_plot_writer_saves_its_figure(tmp_path: Path) -> None:
    report, run = demo_inputs(fold=2)
    written = [plot_results(bench_records(TASKS[:2], batches=(64,), engines=ENGINES[:1]), tmp_path / "b.png"),
               demo.plot_demo(report, run, tmp_path / "d.png"),
               plot_intensity(intensity_rows(TASKS[:2], (1, 2), 64, 4), tmp_path / "i.png"),
               plot_accuracy_vs_fold(sweep_rows()[:4], tmp_path / "s.png")]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
