"""Callbacks of the training loop, Lightning-style: the files a run writes and what it shows.

The loop (:class:`foldedcnns.training.loop.TrainLoop`) calls, in this order: ``on_fit_start``; per
epoch ``on_train_epoch_start``, ``on_train_batch_end`` after every optimiser step,
``on_train_epoch_end``, then (after validation and test) ``on_epoch_end`` with the epoch's
:class:`EpochMetrics`; finally ``on_fit_end``. Callbacks run in list order.

* :class:`MetricsFiles`: ``metrics.csv`` and ``metrics.json`` rewritten from the whole history.
* :class:`Checkpoints`: ``best.pt`` when the epoch beats the best one (:func:`better`), ``last.pt``
  (with optimiser, scheduler, curriculum and RNG state) after every epoch.
* :class:`ProgressBar`: the original's progress line for training batches.
* :class:`BatchHook`: a plain ``on_batch(epoch, step)`` function.

Every file is written atomically: a run killed at any point loses at most the epoch it was in.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from foldedcnns.runtime.checkpoint import save_checkpoint
from foldedcnns.training.metrics import METRIC_COLUMNS, EpochMetrics, MetricAccumulator, ProgressLine
from foldedcnns.utils.atomic import atomic_open, atomic_write_text
from foldedcnns.utils.text import json_safe

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"


class LoopState(Protocol):
    """What callbacks read from (and, for ``best``, write to) the loop."""

    history: list[EpochMetrics]
    best: EpochMetrics | None

    def checkpoint(self, metrics: EpochMetrics, full: bool) -> dict[str, Any]: ...


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, loop: LoopState) -> None:
        pass

    def on_train_epoch_start(self, loop: LoopState, epoch: int, batches: int) -> None:
        """``epoch`` is 0-based; ``batches`` the number of optimiser steps the epoch will take."""

    def on_train_batch_end(self, loop: LoopState, epoch: int, step: int, last: bool, acc: MetricAccumulator) -> None:
        """After optimiser step ``step`` (0-based) of ``epoch``; ``acc`` holds the epoch's metrics so far."""

    def on_train_epoch_end(self, loop: LoopState, epoch: int) -> None:
        pass

    def on_epoch_end(self, loop: LoopState, metrics: EpochMetrics) -> None:
        """After validation and test; ``metrics`` is already the last entry of ``loop.history``."""

    def on_fit_end(self, loop: LoopState) -> None:
        pass


def write_metrics(run_dir: Path, history: Sequence[EpochMetrics]) -> None:
    """Rewrite metrics.csv and metrics.json from the whole history (atomic; idempotent on resume)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METRIC_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(m.csv_row() for m in history)
    atomic_write_text(run_dir / METRICS_CSV, buffer.getvalue())
    with atomic_open(run_dir / METRICS_JSON, "w", encoding="utf-8") as handle:
        json.dump(json_safe([m.to_row() for m in history]), handle, indent=1)


class MetricsFiles(Callback):
    """``metrics.csv`` and ``metrics.json`` after every epoch and at the end of the run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, loop: LoopState, metrics: EpochMetrics) -> None:
        write_metrics(self.run_dir, loop.history)

    def on_fit_end(self, loop: LoopState) -> None:
        write_metrics(self.run_dir, loop.history)


def better(metrics: EpochMetrics, best: EpochMetrics | None) -> bool:
    """The best-checkpoint rule: higher validation Top-1 wins; equal Top-1 is broken by lower validation loss."""
    if best is None:
        return True
    if metrics.val_top1 != best.val_top1:
        return metrics.val_top1 > best.val_top1
    return metrics.val_loss < best.val_loss


class Checkpoints(Callback):
    """``best.pt`` (weights and metrics) when :func:`better`; ``last.pt`` (everything to resume) every epoch."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, loop: LoopState, metrics: EpochMetrics) -> None:
        if better(metrics, loop.best):
            loop.best = metrics
            save_checkpoint(self.run_dir / BEST_CHECKPOINT, loop.checkpoint(metrics, full=False))
        save_checkpoint(self.run_dir / LAST_CHECKPOINT, loop.checkpoint(metrics, full=True))


class ProgressBar(Callback):
    """A tqdm bar per training epoch on stderr: ``Epoch 3. train. Top-1=..., Top-5=..., Loss=...``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.line: ProgressLine | None = None

    def on_train_epoch_start(self, loop: LoopState, epoch: int, batches: int) -> None:
        self.line = ProgressLine(batches, epoch + 1, "train", enabled=self.enabled)

    def on_train_batch_end(self, loop: LoopState, epoch: int, step: int, last: bool, acc: MetricAccumulator) -> None:
        if self.line is not None:
            self.line.step(step, last, acc)

    def on_train_epoch_end(self, loop: LoopState, epoch: int) -> None:
        if self.line is not None:
            self.line.close()
            self.line = None


class BatchHook(Callback):
    """Calls ``on_batch(epoch, step)`` (1-based epoch, 0-based step) after every optimiser step."""

    def __init__(self, on_batch: Callable[[int, int], None]) -> None:
        self.on_batch = on_batch

    def on_train_batch_end(self, loop: LoopState, epoch: int, step: int, last: bool, acc: MetricAccumulator) -> None:
        self.on_batch(epoch + 1, step)
