"""Folding: f images of C channels become one input of f*C channels.

All functions here are pure shape maps over tensors (PyTorch's, or NumPy arrays where an engine takes those:
:data:`Array`); they copy nothing they do not have to.
Image ``j`` of a group of ``f`` consecutive images fills channels ``[j*C, (j+1)*C)`` of the folded
input, and block ``j`` of the ``f*K`` output logits belongs to image ``j`` of that group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from foldedcnns.errors import ConfigError, ShapeError

# Beyond these a value is a typo (and its tensors would not fit in memory or in C integers).
MAX_FOLD = 1024
MAX_BATCH_IMAGES = 2**24
EVAL_ORDER_SEED = 19  # the original's seed for shuffling validation and test images before folding

Array = TypeVar("Array", torch.Tensor, np.ndarray)  # a batch: a torch tensor, or a NumPy array (CPU engines' I/O)


def _check_fold(f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int) or not 1 <= f <= MAX_FOLD:
        raise ConfigError(f"fold must be an integer >= 1 (at most {MAX_FOLD}), got {f!r}; pass --fold 1 for the "
                          "original CNN")


def fold(x: Array, f: int) -> Array:
    """Fold a batch of images into groups of ``f``.

    Shapes: ``(N, C, H, W) -> (N/f, f*C, H, W)``; N must be a multiple of f (see :func:`pad_to_multiple`).
    Image ``n*f + j`` lands in channels ``[j*C, (j+1)*C)`` of folded input ``n``.
    """
    _check_fold(f)
    if x.ndim != 4:
        raise ShapeError(f"fold expects a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if n % f:
        raise ShapeError(f"batch of {n} images is not a multiple of fold {f}; pad it with pad_to_multiple")
    return x.reshape(n // f, f * c, h, w)


def unfold(x: torch.Tensor, f: int) -> torch.Tensor:
    """Inverse of :func:`fold`. Shapes: ``(N/f, f*C, H, W) -> (N, C, H, W)``."""
    _check_fold(f)
    if x.dim() != 4:
        raise ShapeError(f"unfold expects a 4-D folded batch, got shape {tuple(x.shape)}")
    g, fc, h, w = x.shape
    if fc % f:
        raise ShapeError(f"{fc} channels cannot be split into {f} images")
    return x.reshape(g * f, fc // f, h, w)


def unfold_logits(y: Array, f: int) -> Array:
    """Split folded logits into per-image logits.

    Shapes: ``(N/f, f*K) -> (N, K)``; block ``j`` of row ``n`` becomes row ``n*f + j``.
    """
    _check_fold(f)
    if y.ndim != 2:
        raise ShapeError(f"unfold_logits expects 2-D logits (N/f, f*K), got shape {tuple(y.shape)}")
    g, fk = y.shape
    if fk % f:
        raise ShapeError(f"{fk} logits per folded input are not a multiple of fold {f}")
    return y.reshape(g * f, fk // f)


def pad_to_multiple(x: Array, f: int) -> tuple[Array, int]:
    """Pad a batch to a multiple of ``f`` by repeating the images of its last, partial group.

    Shapes: ``(N, ...) -> (ceil(N/f)*f, ...)``. Returns the padded batch and the number of padded
    rows, which the caller drops from the outputs. This is the project's one padding rule: the
    padding of a group comes from that group alone (never zeros, never other groups), so a folded
    model's output for image ``i`` depends only on the images of group ``i // f``, whatever the
    batch around it.
    """
    _check_fold(f)
    n = x.shape[0]
    if n == 0:
        raise ShapeError("cannot fold an empty batch")
    pad = (-n) % f
    if pad == 0:
        return x, 0
    tail = n % f
    if isinstance(x, np.ndarray):
        return np.concatenate([x, x[(n - tail) + np.arange(pad) % tail]]), pad
    index = (n - tail) + torch.arange(pad, device=x.device) % tail
    return torch.cat([x, x.index_select(0, index)], dim=0), pad


def round_batch(batch_size: int, f: int, rounding: str = "down", option: str = "--batch-size") -> int:
    """A batch size in images that is a multiple of ``f``: the project's one batch-rounding rule.

    ``rounding`` is ``"down"`` (never below ``f``: training and evaluation batches), ``"up"`` (the
    benchmark's ``ceil(B/f)*f`` images per call) or ``"exact"`` (a batch that is not a multiple is
    a :class:`ConfigError` naming ``option`` and the two nearest valid sizes).
    """
    _check_fold(f)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_IMAGES:
        raise ConfigError(f"batch size must be a positive integer (at most {MAX_BATCH_IMAGES:,}), got {batch_size!r}")
    lower, upper = max(f, batch_size // f * f), -(-batch_size // f) * f
    if rounding == "down":
        return lower
    if rounding == "up":
        return upper
    if rounding == "exact":
        if batch_size % f:
            raise ConfigError(f"{option} {batch_size} is not a multiple of the fold {f}; "
                              f"pass {lower} or {upper}")
        return batch_size
    raise ValueError(f"rounding must be down, up or exact, got {rounding!r}")


def batch_or_default(batch_size: int | None, f: int, default: int, option: str = "--batch-size") -> int:
    """Images per model call: ``batch_size`` (a multiple of ``f``, else an error naming ``option``), or
    ``default`` rounded up to a multiple of ``f`` when the caller does not choose."""
    if batch_size is None:
        return round_batch(default, f, "up")
    return round_batch(batch_size, f, "exact", option)


def eval_order(n: int, f: int) -> torch.Tensor:
    """The order a data set's ``n`` images are folded in: a fixed shuffle (seed 19) for f > 1, else as listed.

    Image folders list images class by class; folding them in that order would put f images of one
    class into one input, unlike training and deployment. Evaluation and tune's accuracy check both
    fold in this order, so their figures agree. Shapes: ``-> (n,)`` int64, a permutation.
    """
    if f > 1:
        return torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_ORDER_SEED))
    return torch.arange(n)


def run_folded(fn: Callable[[Array], Array], x: Array, f: int) -> Array:
    """Pad, fold, run, unfold: per-image logits of a folded model. The one fold/run/unfold.

    ``fn`` maps folded inputs ``(G, f*C, H, W)`` to folded logits ``(G, f*K)``. Shapes:
    ``(N, C, H, W) -> (N, K)``; the last partial group is padded by :func:`pad_to_multiple` and
    the padded rows are dropped, so every image gets exactly one row.
    """
    n = x.shape[0]
    padded, _ = pad_to_multiple(x, f)
    return unfold_logits(fn(fold(padded, f)), f)[:n]


class FoldedClassifier(nn.Module):
    """Run a folded CNN on an ordinary batch of images.

    ``model`` takes ``(G, f*C, H, W)`` and returns ``(G, f*K)``. This wrapper takes any batch
    ``(N, C, H, W)`` with N >= 1 and returns ``(N, K)``: it pads the last partial group by
    repeating the images of that group, folds, runs the model, unfolds the logits and drops the
    padded rows. A batch is never silently cropped.
    """

    def __init__(self, model: nn.Module, fold: int, in_channels: int = 3) -> None:
        super().__init__()
        _check_fold(fold)
        self.model = model
        self.fold = fold
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ShapeError(f"expected a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"expected {self.in_channels} channels per image, got {x.shape[1]}; "
                "pass unfolded images, the wrapper folds them"
            )
        return run_folded(self.model, x, self.fold)
