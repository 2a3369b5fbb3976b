"""A sweep's summary: one row per run, the mean and spread over seeds per (task, fold), and the plot.

``summary.csv`` has one row per (task, fold, seed) run, with its status, its one-line error when it did
not finish, how many attempts it took, and beside it the mean and sample standard deviation (n - 1) of
test Top-1 over the finished seeds of its (task, fold). ``summary_folds.csv`` has one row per (task,
fold); ``summary.json`` holds both (``{"runs": [...], "folds": [...]}``). ``accuracy_vs_fold.png`` draws
the mean test Top-1 per task against fold, the spread over seeds as a band and every seed as a dot.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from foldedcnns.analysis import flops_per_image
from foldedcnns.models.registry import ModelConfig, build_from_config
from foldedcnns.training.sweep_plan import DONE, RunOutcome, SweepRun
from foldedcnns.utils.atomic import atomic_open, atomic_write_text
from foldedcnns.utils.plotting import line_style, new_axes, save_figure
from foldedcnns.utils.text import json_safe

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
FOLDS_CSV = "summary_folds.csv"
PLOT_PNG = "accuracy_vs_fold.png"
SUMMARY_COLUMNS = ("task", "fold", "seed", "status", "multiplier", "mode", "epochs", "best_epoch", "val_top1",
                   "test_top1", "test_top1_mean", "test_top1_std", "seeds_done", "test_top5", "test_loss",
                   "test_images", "top1_vs_fold1", "params", "flops_per_image", "seconds", "attempts",
                   "resumed_from", "teacher", "error", "run_dir")
FOLD_COLUMNS = ("task", "fold", "mode", "runs", "seeds_done", "test_top1_mean", "test_top1_std", "val_top1_mean",
                "val_top1_std", "top1_vs_fold1_mean", "seconds_mean")


@functools.lru_cache(maxsize=256)
def _model_cost(model_config: str) -> tuple[int, float]:
    config = ModelConfig.from_dict(json.loads(model_config))
    model = build_from_config(config)
    return sum(p.numel() for p in model.parameters()), float(flops_per_image(config))


def _mode(task: str, fold: int) -> str:
    return "Compound" if task.startswith("compound/") else ("Original" if fold == 1 else "Folded")


def summary_row(run: SweepRun, outcome: RunOutcome, attempts: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The summary row of one run (the per-(task, fold) columns are filled by :func:`add_seed_stats`)."""
    params, flops = _model_cost(json.dumps(run.model_config, sort_keys=True))
    result = outcome.result
    best = {} if result is None else result.best
    teacher = None if result is None or not result.teacher else result.teacher.get("teacher")
    return {"task": run.task, "fold": run.fold, "seed": run.seed, "status": outcome.status,
            "multiplier": round(float(run.model_config.get("multiplier", 1.0)), 4), "mode": _mode(run.task, run.fold),
            "epochs": None if result is None else result.epochs,
            "best_epoch": None if result is None else result.best_epoch, "val_top1": best.get("val_top1"),
            "test_top1": best.get("test_top1"), "test_top1_mean": None, "test_top1_std": None, "seeds_done": None,
            "test_top5": best.get("test_top5"), "test_loss": best.get("test_loss"),
            "test_images": best.get("test_images"), "top1_vs_fold1": None, "params": params, "flops_per_image": flops,
            "seconds": None if result is None else round(result.seconds, 2),
            "attempts": sum(1 for e in attempts if e.get("event") == "start"),
            "resumed_from": None if result is None else result.resumed_from, "teacher": teacher,
            "error": outcome.error, "run_dir": str(run.run_dir)}


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _mean_std(values: Sequence[Any]) -> tuple[float | None, float | None]:
    kept = _finite(values)
    if not kept:
        return None, None
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else None


def add_seed_stats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill every row's ``top1_vs_fold1`` (against its task's fold-1 run of the same seed) and its (task, fold)'s
    mean, standard deviation and number of finished seeds; return one row per (task, fold)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["fold"])].append(row)
    base = {(r["task"], r.get("seed")): r["test_top1"] for r in rows if r["fold"] == 1 and r.get("status") == DONE}
    for row in rows:
        ref = base.get((row["task"], row.get("seed")))
        top1 = row.get("test_top1")
        row["top1_vs_fold1"] = None if ref is None or not _finite([top1, ref]) else top1 - ref
    folds = []
    for (task, fold), members in groups.items():
        done = [r for r in members if r.get("status") == DONE]
        test_mean, test_std = _mean_std([r["test_top1"] for r in done])
        val_mean, val_std = _mean_std([r["val_top1"] for r in done])
        for row in members:
            row.update(test_top1_mean=test_mean, test_top1_std=test_std, seeds_done=len(done))
        ref_mean = _mean_std([r["test_top1"] for r in groups.get((task, 1), []) if r.get("status") == DONE])[0]
        seconds = _mean_std([r["seconds"] for r in done])[0]
        folds.append({"task": task, "fold": fold, "mode": _mode(task, fold), "runs": len(members),
                      "seeds_done": len(done), "test_top1_mean": test_mean, "test_top1_std": test_std,
                      "val_top1_mean": val_mean, "val_top1_std": val_std,
                      "top1_vs_fold1_mean": None if ref_mean is None or test_mean is None else test_mean - ref_mean,
                      "seconds_mean": seconds})
    return folds


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_summary(rows: Sequence[dict[str, Any]], folds: Sequence[dict[str, Any]],
                  out: str | Path) -> tuple[Path, Path, Path]:
    """``summary.csv`` (runs), ``summary_folds.csv`` (per task and fold) and ``summary.json`` (both), atomically."""
    out = Path(out)
    atomic_write_text(out / SUMMARY_CSV, _csv_text(rows, SUMMARY_COLUMNS))
    atomic_write_text(out / FOLDS_CSV, _csv_text(folds, FOLD_COLUMNS))
    with atomic_open(out / SUMMARY_JSON, "w", encoding="utf-8") as handle:
        json.dump(json_safe({"runs": list(rows), "folds": list(folds)}), handle, indent=1)
    return out / SUMMARY_CSV, out / FOLDS_CSV, out / SUMMARY_JSON


def accuracy_figure(rows: Sequence[dict[str, Any]]) -> Figure:
    """Test Top-1 (at the best validation epoch) against fold, one line per task through the mean over seeds
    (colour, marker and dash told apart for up to 20 tasks), the legend beside the axes. With several seeds
    a band shows mean +- one standard deviation and a dot every seed's run."""
    by_task: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("status", DONE) == DONE:
            by_task[row["task"]][row["fold"]].extend(_finite([row.get("test_top1")]))
    seeds = max((len(v) for folds in by_task.values() for v in folds.values()), default=1)
    fig, ax = new_axes((9, 4.8))
    for i, (task, per_fold) in enumerate(sorted(by_task.items())):
        style = line_style(i, len(by_task))
        folds = sorted(f for f, values in per_fold.items() if values)
        means = [statistics.fmean(per_fold[f]) for f in folds]
        ax.plot(folds, means, label=task, **style)
        if seeds > 1:
            spread = [statistics.stdev(per_fold[f]) if len(per_fold[f]) > 1 else 0.0 for f in folds]
            ax.fill_between(folds, [m - s for m, s in zip(means, spread, strict=True)],
                            [m + s for m, s in zip(means, spread, strict=True)], color=style["color"], alpha=0.15,
                            linewidth=0)
            dots = [(f, v) for f in folds for v in per_fold[f]]
            ax.scatter([f for f, _ in dots], [v for _, v in dots], color=style["color"], s=12, alpha=0.6,
                       marker=style["marker"], zorder=3)
    folds = sorted({r["fold"] for r in rows})
    ax.set_xticks(folds, [str(f) for f in folds])
    ax.set_xlabel("fold f (1 = original CNN)")
    ax.set_ylabel("test Top-1 (%)" if seeds == 1 else "test Top-1 (%), mean ± std over seeds")
    ax.set_title("Accuracy vs fold" if seeds == 1 else f"Accuracy vs fold (up to {seeds} seeds; dots: runs)")
    ax.grid(alpha=0.3)
    if by_task:
        fig.legend(loc="outside right upper", fontsize=8)
    return fig


def plot_accuracy_vs_fold(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """:func:`accuracy_figure` written as a PNG at ``path``."""
    return save_figure(accuracy_figure(rows), path)
