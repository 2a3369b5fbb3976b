"""Evaluation: every image of a split exactly once, through the runtime's :class:`Prepared` runner.

Validation during training and ``foldedcnns evaluate`` share :func:`evaluate_split`: uint8 images
become model inputs through :func:`foldedcnns.data.model_input.to_model_input` and logits come from
``Prepared.classify`` (pad the last partial group, fold, run, unfold). Training-style evaluation runs
the :func:`eval_engine` (fp32 on the ``eager`` backend, or ``channels-last`` for a run trained in that
memory format); :func:`evaluate` with an ``engine=`` runs the checkpoint as deployed instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from foldedcnns.core.folding import eval_order, round_batch
from foldedcnns.data.model_input import to_model_input
from foldedcnns.errors import ConfigError
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.backends import Prepared
from foldedcnns.runtime.checkpoint import load_checkpoint, model_from_checkpoint
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.training.metrics import MetricAccumulator, ProgressLine, empty_summary, topk_correct
from foldedcnns.training.splits import SplitData, load_split
from foldedcnns.utils.text import json_safe

DEFAULT_EVAL_BATCH = 512


@dataclass
class EvalOutputs:
    """Per-image results of one pass over a split, all (N,) in the split's order: loss, Top-1 and Top-5
    hits, labels, and ``predicted`` (int64 top-1 class)."""

    loss: torch.Tensor
    hit1: torch.Tensor
    hit5: torch.Tensor
    labels: torch.Tensor
    predicted: torch.Tensor

    def summary(self, mask: torch.Tensor | None = None) -> dict[str, float | int]:
        """``{"top1": %, "top5": %, "loss": mean, "images": n}`` over all images or those in ``mask``."""
        loss, hit1, hit5 = (self.loss, self.hit1, self.hit5) if mask is None else \
            (self.loss[mask], self.hit1[mask], self.hit5[mask])
        n = int(loss.numel())
        if n == 0:
            return empty_summary()
        return {"top1": 100.0 * hit1.double().mean().item(), "top5": 100.0 * hit5.double().mean().item(),
                "loss": loss.double().mean().item(), "images": n}


def eval_engine(device: torch.device | str, *, channels_last: bool = False) -> Engine:
    """The engine validation during training runs on ``device``: fp32 on ``channels-last`` for a model
    trained in that memory format, else on ``eager``."""
    return Engine("channels-last" if channels_last else "eager", "fp32", str(device))


def evaluate_split(runner: Prepared, split: SplitData, task: TaskSpec, *, batch_size: int = DEFAULT_EVAL_BATCH,
                   epoch: int = 0, name: str = "eval", progress: bool = False) -> EvalOutputs:
    """Run ``runner`` over every image of ``split`` exactly once; per-image results in the split's order.

    Batches of ``batch_size`` images rounded down to a multiple of the fold (:func:`round_batch`) are
    taken in :func:`eval_order`; the progress line reads ``Epoch {epoch}. {name}. Top-1=...``.
    """
    device, fold = runner.device, runner.fold
    batch_size = round_batch(batch_size, fold, "down")
    n = len(split)
    order = eval_order(n, fold)
    images, labels = split.images[order].to(device), split.labels[order].to(device)
    acc = MetricAccumulator(device)
    line = ProgressLine(-(-n // batch_size), epoch, name, enabled=progress and n > 0)
    losses, hits1, hits5, predicted = [], [], [], []
    for step, start in enumerate(range(0, n, batch_size)):
        y = labels[start:start + batch_size]
        logits = runner.classify(to_model_input(images[start:start + batch_size], task, device, layout="nchw"))
        loss = F.cross_entropy(logits, y, reduction="none")
        losses.append(loss)
        top1 = logits.argmax(dim=1)
        predicted.append(top1)
        hits1.append(top1 == y)
        hits5.append(topk_correct(logits, y, 5))
        if progress:
            acc.add(loss, logits, y)
            line.step(step, start + batch_size >= n, acc)
    line.close()
    if not losses:
        empty = torch.zeros(0, device="cpu")
        return EvalOutputs(empty, empty.bool(), empty.bool(), split.labels.cpu(), empty.long())
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    return EvalOutputs(torch.cat(losses).cpu()[inverse], torch.cat(hits1).cpu()[inverse],
                       torch.cat(hits5).cpu()[inverse], split.labels.cpu(), torch.cat(predicted).cpu()[inverse])


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "test", *, engine: Engine | None = None,
             batch_size: int = DEFAULT_EVAL_BATCH, amp: bool | None = None, progress: bool = False) -> dict[str, Any]:
    """Top-1, Top-5 (percent), mean cross-entropy and image count of a checkpoint on one split.

    Everything needed (task, classes, fold, input size, normalisation, validation split) comes from
    the checkpoint. ``engine`` None runs it as validation during training does: fp32 on the ``eager``
    backend, device ``auto``; ``amp=True`` runs it in fp16 instead (CUDA only). An ``engine`` runs it
    as deployed: that backend, precision and device; int8 calibrated by
    :meth:`Engine.for_deployment` (the engine's own calibration, else ``data``'s train split).
    """
    ckpt = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(ckpt)
    engine = Engine(device="auto") if engine is None else engine
    if amp:
        if engine.precision != "fp32":
            raise ConfigError(f"--amp runs an fp32 engine in fp16; drop --amp to run {engine.precision}")
        if engine.resolved().device.split(":")[0] != "cuda":
            raise ConfigError("mixed precision (--amp) needs a CUDA device; pass --device cuda")
        engine = engine.replace(precision="fp16")
    engine = engine.for_deployment(config.task, data)
    recipe = (ckpt.get("train_config") or {}).get("recipe") or {}
    val_split = recipe.get("val_split", 0.1)
    split_data = load_split(data, config.task, split, config.image_size, val_split)
    runner = engine.prepare(model, batch_size)
    with torch_threads(engine.pytorch_threads):
        outputs = evaluate_split(runner, split_data, config.task, batch_size=batch_size,
                                 epoch=ckpt.get("epoch") or 0, name=split, progress=progress)
    return {"checkpoint": str(checkpoint), "task": ckpt.get("task", config.name), "fold": config.fold,
            "multiplier": config.multiplier, "epoch": ckpt.get("epoch"), "split": split,
            **json_safe(outputs.summary())}
