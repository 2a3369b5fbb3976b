"""Sweeps: train every task at every fold and seed, then one summary and an accuracy-vs-fold plot.

Each run lives in ``OUT/<task>/fold<f>/seed<s>/`` and is trained with ``resume=True``, so a killed sweep is
restarted with the same command: finished runs are read back (``result.json``, nothing retrained), an
interrupted one continues from its ``last.pt``. OUT must be new, empty or an earlier sweep's folder
(marked by ``.foldedcnns-sweep``). Runs go one after another in this process, or, with
``SweepConfig.ray``, as Ray tasks (:mod:`~foldedcnns.training.sweep_ray`). A run that fails is recorded
with its one-line error and the others go on; :attr:`SweepResult.failed` lists them.

Pieces: :mod:`~foldedcnns.training.sweep_plan` (the runs, one run's execution, the attempts log) and
:mod:`~foldedcnns.training.sweep_summary` (rows, mean and spread over seeds, files, plot).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldedcnns.training.sweep_plan import (
    DONE,
    FAILED,
    NOT_RUN,
    SWEEP_MARKER,
    RaySweepOptions,
    RunKey,
    RunOutcome,
    SweepConfig,
    SweepRun,
    adopt_legacy_run,
    data_for_task,
    execute,
    plan_sweep,
    read_attempts,
    read_back,
    run_dir_for,
    task_label,
)
from foldedcnns.training.sweep_ray import run_on_ray
from foldedcnns.training.sweep_summary import (
    FOLDS_CSV,
    PLOT_PNG,
    SUMMARY_COLUMNS,
    SUMMARY_CSV,
    SUMMARY_JSON,
    accuracy_figure,
    add_seed_stats,
    plot_accuracy_vs_fold,
    summary_row,
    write_summary,
)
from foldedcnns.utils.atomic import atomic_write_text
from foldedcnns.utils.outputs import claim_folder
from foldedcnns.utils.signals import on_interrupt

__all__ = ["DONE", "FAILED", "FOLDS_CSV", "NOT_RUN", "PLOT_PNG", "SUMMARY_COLUMNS", "SUMMARY_CSV", "SUMMARY_JSON",
           "SWEEP_MARKER", "RaySweepOptions", "SweepConfig", "SweepResult", "SweepRun", "accuracy_figure",
           "data_for_task", "plan_sweep", "plot_accuracy_vs_fold", "run_dir_for", "sweep", "task_label",
           "write_summary"]


@dataclass
class SweepResult:
    """One row per run (plan order) and per (task, fold), and the files written."""

    rows: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    summary_csv: Path
    folds_csv: Path
    summary_json: Path
    plot: Path

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The rows of runs that did not finish (failed, or not run because their teacher did not finish)."""
        return [row for row in self.rows if row["status"] != DONE]


class _Summary:
    """The summary as outcomes come in: rows in plan order, rewritten to OUT after every run."""

    def __init__(self, runs: list[SweepRun], out: Path, on_run: Callable[[dict[str, Any]], None] | None) -> None:
        self.runs, self.out, self.on_run = runs, out, on_run
        self.outcomes: dict[RunKey, RunOutcome] = {}
        self.rows: dict[RunKey, dict[str, Any]] = {}

    def record(self, outcome: RunOutcome) -> None:
        run = next(r for r in self.runs if r.key == outcome.key)
        self.outcomes[run.key] = outcome
        row = summary_row(run, outcome, read_attempts(run))
        self.rows[run.key] = row
        self.write()
        if self.on_run is not None:
            self.on_run(row)

    def write(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], tuple[Path, Path, Path]]:
        rows = [self.rows[r.key] for r in self.runs if r.key in self.rows]
        folds = add_seed_stats(rows)
        return rows, folds, write_summary(rows, folds, self.out)


def sweep(config: SweepConfig, *, on_run: Callable[[dict[str, Any]], None] | None = None,
          on_batch: Callable[[SweepRun, int, int], None] | None = None) -> SweepResult:
    """Train tasks x folds x seeds (every run checked before the first starts); ``on_run(row)`` after each run
    ends (in the driver), ``on_batch(run, epoch, step)`` after every optimiser step (in the worker on Ray:
    then it must be picklable)."""
    runs = plan_sweep(config)
    out = claim_folder(config.out, (SWEEP_MARKER, SUMMARY_CSV), owner="an earlier sweep").absolute()
    out.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    atomic_write_text(out / SWEEP_MARKER, token + "\n")
    for run in runs:
        adopt_legacy_run(run)
    summary = _Summary(runs, out, on_run)
    if config.ray is None:
        with on_interrupt(f"finished runs are kept in {out}; run the same sweep command again to continue"):
            for run in runs:
                teacher = None if run.teacher is None else summary.outcomes.get(run.teacher)
                summary.record(read_back(run) or execute(run, teacher, on_batch=on_batch))
    else:
        with on_interrupt(f"the Ray tasks were cancelled; finished runs are kept in {out}; run the same sweep "
                          "command again to continue"):
            run_on_ray(runs, config.ray, out, token, summary.record, on_batch)
    rows, folds, (csv_path, folds_path, json_path) = summary.write()
    plot = plot_accuracy_vs_fold(rows, out / PLOT_PNG)
    return SweepResult(rows, folds, csv_path, folds_path, json_path, plot)
