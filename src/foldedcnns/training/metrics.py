"""Per-image metrics: Top-1, Top-5 and loss, accumulated over an epoch.

Accuracies are percentages (0-100). Top-k uses ``min(k, K)`` for a task with K < k classes (so
Top-5 of a 2-class task is 100); the original wrote 0 in that case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOP_K = (1, 5)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N,) tensor: is the label among the ``k`` highest logits? Shapes: (N, K), (N,)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels.unsqueeze(1)).any(dim=1)


class MetricAccumulator:
    """Sums of per-image loss and top-k hits, kept on the device (no sync per batch).

    ``add(loss, logits, labels, weight)`` takes per-image losses (N,), logits (N, K), labels (N,) and an
    optional 0/1 weight (N,) that masks padded images out.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.hits = {k: torch.zeros((), dtype=torch.float64, device=device) for k in TOP_K}
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
            weight: torch.Tensor | None = None) -> None:
        w = torch.ones_like(loss, dtype=torch.float64) if weight is None else weight.to(torch.float64)
        self.loss += (loss.detach().to(torch.float64) * w).sum()
        for k in TOP_K:
            self.hits[k] += (topk_correct(logits.detach(), labels, k).to(torch.float64) * w).sum()
        self.count += w.sum()

    def summary(self) -> dict[str, float | int]:
        """``{"top1": %, "top5": %, "loss": mean, "images": n}`` (NaN metrics for zero images)."""
        n = float(self.count.item())
        if n == 0:
            return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "images": 0}
        return {"top1": 100.0 * float(self.hits[1].item()) / n, "top5": 100.0 * float(self.hits[5].item()) / n,
                "loss": float(self.loss.item()) / n, "images": round(n)}


@dataclass(frozen=True)
class SplitMetrics:
    """Metrics of one split in one epoch."""

    top1: float
    top5: float
    loss: float
    images: int

    def to_dict(self) -> dict[str, float | int]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "images": self.images}


def format_progress(epoch: int, split: str, summary: dict[str, float | int]) -> str:
    """The original's progress line: ``Epoch 3. train. Top-1=97.50, Top-5=100.00, Loss=0.0812``."""
    return (f"Epoch {epoch}. {split}. Top-1={summary['top1']:.2f}, Top-5={summary['top5']:.2f}, "
            f"Loss={summary['loss']:.4f}")
