"""Sweeps: train every task at every fold, then one summary CSV/JSON and an accuracy-vs-fold plot.

Each run lives in ``OUT/<task>/fold<f>/`` and is trained with ``resume=True``, so a killed sweep is
restarted with the same command: finished runs are read back, the interrupted one continues. OUT
must be new, empty or an earlier sweep's folder (marked by ``.foldedcnns-sweep``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from foldedcnns.analysis import flops_per_image
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.models.registry import ModelConfig, build_from_config, get_task
from foldedcnns.training.trainer import TrainConfig, TrainResult, plan_run, train
from foldedcnns.utils.atomic import atomic_open, atomic_write_text
from foldedcnns.utils.outputs import claim_folder
from foldedcnns.utils.plotting import line_style, new_axes, save_figure
from foldedcnns.utils.signals import on_interrupt
from foldedcnns.utils.text import json_safe

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
PLOT_PNG = "accuracy_vs_fold.png"
SWEEP_MARKER = ".foldedcnns-sweep"  # marks OUT as a sweep's own folder, which a restart continues
SUMMARY_COLUMNS = ("task", "fold", "multiplier", "mode", "epochs", "best_epoch", "val_top1", "test_top1",
                   "test_top5", "test_loss", "test_images", "top1_vs_fold1", "params", "flops_per_image",
                   "seconds", "run_dir")


@dataclass
class SweepConfig:
    """Tasks x folds to train. ``data`` holds one data folder per task (``DATA/<task>``), or is the data
    folder itself when there is a single task; ``base`` holds :class:`TrainConfig` fields shared by every
    run (epochs, batch_size, lr, recipe, device, seed, ...)."""

    tasks: Sequence[str]
    folds: Sequence[int]
    data: str | Path
    out: str | Path
    base: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    summary_csv: Path
    summary_json: Path
    plot: Path


def task_label(task: str) -> str:
    """The name a task's folders use: the task name (``compound/...`` kept), also for a description file."""
    spec = get_task(task)
    return task if task in (spec.name, f"compound/{spec.name}") else spec.name


def data_for_task(root: str | Path, task: str, single: bool) -> Path:
    """``root/<task name>`` if it exists, else ``root`` itself for a one-task sweep."""
    root = Path(root)
    name = get_task(task).name
    candidate = root / name
    if candidate.exists() and not (root / "train").is_dir():
        return candidate
    if single:
        return root
    raise DataError(f"no data for task {task} under {root}; put each task's data in {root}/<task name>/ "
                    "(e.g. DATA/lol/goldnumber-fraction/train)")


def run_dir_for(out: str | Path, task: str, fold: int) -> Path:
    return Path(out) / task_label(task) / f"fold{fold}"


def _model_cost(result: TrainResult) -> tuple[int | None, float | None]:
    config = ModelConfig.from_dict(result.settings["model_config"])
    model = build_from_config(config)
    return sum(p.numel() for p in model.parameters()), float(flops_per_image(config))


def summary_row(result: TrainResult) -> dict[str, Any]:
    params, flops = _model_cost(result)
    mode = "Original" if result.fold == 1 else "Folded"
    if result.task.startswith("compound/"):
        mode = "Compound"
    best = result.best
    return {"task": result.task, "fold": result.fold, "multiplier": round(result.multiplier, 4), "mode": mode,
            "epochs": result.epochs, "best_epoch": result.best_epoch, "val_top1": best.get("val_top1"),
            "test_top1": best.get("test_top1"), "test_top5": best.get("test_top5"),
            "test_loss": best.get("test_loss"), "test_images": best.get("test_images"), "top1_vs_fold1": None,
            "params": params, "flops_per_image": flops, "seconds": round(result.seconds, 2),
            "run_dir": str(result.run_dir)}


def _add_deltas(rows: list[dict[str, Any]]) -> None:
    base = {r["task"]: r["test_top1"] for r in rows if r["fold"] == 1}
    for row in rows:
        ref = base.get(row["task"])
        if ref is not None and row["test_top1"] is not None and math.isfinite(row["test_top1"]):
            row["top1_vs_fold1"] = row["test_top1"] - ref


def write_summary(rows: Sequence[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(out / SUMMARY_CSV, buffer.getvalue())
    with atomic_open(out / SUMMARY_JSON, "w", encoding="utf-8") as handle:
        json.dump(json_safe(list(rows)), handle, indent=1)
    return out / SUMMARY_CSV, out / SUMMARY_JSON


def accuracy_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """Test Top-1 (at the best validation epoch) against fold, one line per task (colour, marker and dash
    told apart for up to 20 tasks), the legend beside the axes."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    fig, ax = new_axes((9, 4.8))
    for i, (task, task_rows) in enumerate(sorted(by_task.items())):
        task_rows = sorted(task_rows, key=lambda r: r["fold"])
        ax.plot([r["fold"] for r in task_rows], [r["test_top1"] for r in task_rows], label=task,
                **line_style(i, len(by_task)))
    folds = sorted({r["fold"] for r in rows})
    ax.set_xticks(folds, [str(f) for f in folds])
    ax.set_xlabel("fold f (1 = original CNN)")
    ax.set_ylabel("test Top-1 (%)")
    ax.set_title("Accuracy vs fold")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def plot_accuracy_vs_fold(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """:func:`accuracy_figure` written as a PNG at ``path``."""
    return save_figure(accuracy_figure(rows), path)


def sweep(config: SweepConfig, *, on_run: Callable[[dict[str, Any]], None] | None = None) -> SweepResult:
    """Train tasks x folds (every run checked before the first starts); ``on_run(row)`` after each run."""
    if not config.tasks or not config.folds:
        raise ConfigError("a sweep needs at least one task and one fold; pass --tasks and --folds")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"task", "data", "out", "fold", "resume"}
    unknown = sorted(set(config.base) - known)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)} for a sweep")
    single = len(config.tasks) == 1
    runs = []
    for task in config.tasks:
        data = data_for_task(config.data, task, single)
        for fold in config.folds:
            run = TrainConfig(task=task, data=data, out=run_dir_for(config.out, task, fold), fold=fold, resume=True,
                              **config.base)
            plan_run(run)
            runs.append(run)
    out = claim_folder(config.out, (SWEEP_MARKER, SUMMARY_CSV), owner="an earlier sweep")
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_MARKER).touch()
    rows: list[dict[str, Any]] = []
    with on_interrupt(f"finished runs are kept in {out}; run the same sweep command again to continue"):
        for run in runs:
            row = summary_row(train(run))
            rows.append(row)
            _add_deltas(rows)
            write_summary(rows, config.out)
            if on_run is not None:
                on_run(row)
    csv_path, json_path = write_summary(rows, config.out)
    plot = plot_accuracy_vs_fold(rows, Path(config.out) / PLOT_PNG)
    return SweepResult(rows, csv_path, json_path, plot)
