"""Per-image metrics (Top-1, Top-5, loss) accumulated over an epoch, the per-epoch record and progress lines.

Accuracies are percentages (0-100). Top-k uses ``min(k, K)`` for a task with K < k classes (so
Top-5 of a 2-class task is 100); the original wrote 0 in that case.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

TOP_K = (1, 5)
SPLIT_KEYS = ("top1", "top5", "loss", "images")  # the keys of a split's summary, in this order
PROGRESS_EVERY = 10  # batches between progress-line refreshes (each one syncs the device)
PROGRESS_SECONDS = 0.5  # least time between two progress-bar redraws

# The columns of metrics.csv, in order (metrics.json keeps the field order of EpochMetrics).
METRIC_COLUMNS = ("epoch", "classes", "lr", "seconds",
                  "train_top1", "train_top5", "train_loss", "train_images",
                  "val_top1", "val_top5", "val_loss", "val_images", "val_top1_seen",
                  "test_top1", "test_top5", "test_loss", "test_images")


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N,) tensor: is the label among the ``k`` highest logits? Shapes: (N, K), (N,)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels.unsqueeze(1)).any(dim=1)


def empty_summary() -> dict[str, float | int]:
    """The summary of a split without images: NaN metrics, 0 images."""
    return {"top1": math.nan, "top5": math.nan, "loss": math.nan, "images": 0}


class MetricAccumulator:
    """Sums of per-image loss and top-k hits, kept on the device (no sync per batch).

    ``add(loss, logits, labels)`` takes per-image losses (N,), logits (N, K) and labels (N,) of the
    real images of a batch (padded rows already dropped).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.hits = {k: torch.zeros((), dtype=torch.float64, device=device) for k in TOP_K}
        self.count = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss.detach().to(torch.float64).sum()
        for k in TOP_K:
            self.hits[k] += topk_correct(logits.detach(), labels, k).sum()
        self.count += int(labels.shape[0])

    def summary(self) -> dict[str, float | int]:
        """``{"top1": %, "top5": %, "loss": mean, "images": n}`` (NaN metrics for zero images)."""
        n = self.count
        if n == 0:
            return empty_summary()
        return {"top1": 100.0 * float(self.hits[1].item()) / n, "top5": 100.0 * float(self.hits[5].item()) / n,
                "loss": float(self.loss.item()) / n, "images": n}


@dataclass(frozen=True)
class EpochMetrics:
    """One finished epoch: a row of ``metrics.csv``, an entry of ``metrics.json`` and of the history.

    ``classes`` is the number of classes the curriculum trained on; ``val_top1_seen`` the validation
    Top-1 over those classes only. Missing test split: NaN test metrics and 0 test images.
    """

    epoch: int
    classes: int
    lr: float
    train_top1: float
    train_top5: float
    train_loss: float
    train_images: int
    val_top1: float
    val_top5: float
    val_loss: float
    val_images: int
    val_top1_seen: float
    test_top1: float
    test_top5: float
    test_loss: float
    test_images: int
    seconds: float

    @classmethod
    def from_splits(cls, *, epoch: int, classes: int, lr: float, train: Mapping[str, Any], val: Mapping[str, Any],
                    val_top1_seen: float, test: Mapping[str, Any] | None, seconds: float) -> EpochMetrics:
        """Build the record from split summaries (``{"top1", "top5", "loss", "images"}``)."""
        test = empty_summary() if test is None else test
        values = {f"{split}_{key}": summary[key] for split, summary in (("train", train), ("val", val), ("test", test))
                  for key in SPLIT_KEYS}
        return cls(epoch=epoch, classes=classes, lr=lr, val_top1_seen=val_top1_seen, seconds=seconds, **values)

    def to_row(self) -> dict[str, Any]:
        """The plain dict stored in metrics.json, checkpoints and result.json (keys in field order)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EpochMetrics:
        """Inverse of :meth:`to_row` (extra keys are ignored)."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def csv_row(self) -> dict[str, Any]:
        """The metrics.csv row: floats as ``%.6g``, NaN and infinities as empty cells."""
        row = self.to_row()
        return {key: _csv_cell(row[key]) for key in METRIC_COLUMNS}


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return value



def format_progress(epoch: int, split: str, summary: Mapping[str, float | int]) -> str:
    """The original's progress line: ``Epoch 3. train. Top-1=97.50, Top-5=100.00, Loss=0.0812``."""
    return (f"Epoch {epoch}. {split}. Top-1={summary['top1']:.2f}, Top-5={summary['top5']:.2f}, "
            f"Loss={summary['loss']:.4f}")


class ProgressLine:
    """A tqdm bar on stderr for one pass over a split, described by :func:`format_progress`."""

    def __init__(self, total: int, epoch: int, split: str, enabled: bool = True) -> None:
        self.epoch, self.split, self.enabled = epoch, split, enabled
        self.bar = tqdm(total=total, desc=f"Epoch {epoch}. {split}", file=sys.stderr, disable=not enabled,
                        leave=True, dynamic_ncols=True, mininterval=PROGRESS_SECONDS)

    def step(self, step: int, last: bool, acc: MetricAccumulator) -> None:
        """After batch ``step``: advance; every PROGRESS_EVERY batches and at the end, refresh the metrics."""
        self.bar.update(1)
        if self.enabled and (step % PROGRESS_EVERY == 0 or last):
            self.bar.set_description(format_progress(self.epoch, self.split, acc.summary()))

    def close(self) -> None:
        self.bar.close()
