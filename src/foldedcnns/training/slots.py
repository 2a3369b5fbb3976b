"""Slot warm-up: start a FoldedCNN as f tied copies of one narrow CNN, one per folded image, then let them mix.

Not in the original. A freshly initialised FoldedCNN mixes the f images of an input in every layer,
so at the start each image's logits depend as much on the other f - 1 images as on their own. On
hard tasks (the synthetic game crops) training then sits at chance level for a long time: the
features carry too little of each image's label to be worth keeping, Adam's sign-like updates of the
cross-image weights add more mixing noise, and the ReLUs die one by one (docs/training.md, "Slot
warm-up", has the runs).

``SlotWarmup(model, f, epochs)`` fixes that without changing the architecture or its FLOPs:

1. every conv and linear weight is made block-diagonal over f contiguous channel groups ("slots":
   group j reads only group j of the layer before; the first layer's group j reads image j, the
   classifier's block j writes image j's logits), scaled by sqrt(f) to keep activation variance;
2. for ``epochs`` epochs the f diagonal blocks are *tied*: they start equal and each gets the mean of
   their gradients, so the model trains as one narrow CNN (1/sqrt(f) of the original's width) that
   sees every image of the batch, whichever slot it sits in (untied, each slot's copy would see only
   1/f of the data and learn f times slower); the cross-slot weights stay at zero (their updates are
   undone after every step, so the optimiser's statistics for them are ready when they start);
3. for ``epochs`` more epochs the cross-slot weights (starting at zero) take a growing share,
   ``alpha`` from 0 to 1, of each optimiser update, and the slots untie the same way: each diagonal
   block moves by the mean of the f blocks' updates plus ``alpha`` of its own deviation from that mean
   (Adam would otherwise move all cross-slot weights by about the learning rate at once, and the untied
   blocks by up to twice their tied step, which throws the model back towards chance level); then
   every weight trains normally.

Channel groups are contiguous index ranges (``floor(i * f / n)``), which matches how folding stacks
images along channels and how the classifier's output holds one block of K logits per image; a
linear layer after a flatten groups its inputs by the channel they come from. When a width is not a
multiple of f (55 channels at f = 3) the groups differ by one channel; the tied part of a block is
then its first ``min group size`` rows and columns and the rest trains per slot. Everything is a
function of (epoch, step), so a resumed run continues the same schedule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from foldedcnns.errors import ConfigError

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def slot_groups(n: int, fold: int) -> torch.Tensor:
    """Group (image slot) of each of ``n`` channels: ``floor(i * fold / n)``. Shape (n,)."""
    return torch.arange(n) * fold // n


def inputs_per_channel(n: int, channels: int | None) -> int:
    """Inputs of a layer that come from each channel of the layer before: ``n // channels`` for a linear
    layer after a channel-major flatten (``n`` a larger multiple of ``channels``), else 1."""
    return n // channels if channels and n != channels and n % channels == 0 else 1


def feature_groups(n: int, fold: int, channels: int | None = None) -> torch.Tensor:
    """Slot of each of ``n`` inputs of a layer. Shape (n,).

    ``channels``: the channel count of the layer before; after a flatten each input belongs to the slot
    of the channel it comes from (:func:`inputs_per_channel`).
    """
    unit = inputs_per_channel(n, channels)
    return slot_groups(n // unit, fold).repeat_interleave(unit)


def tie_index(groups: torch.Tensor, fold: int, unit: int = 1) -> torch.Tensor:
    """Indices (f, s) of the tied part of each slot: the first ``s`` members of every group, where ``s``
    is the smallest group size. ``unit`` > 1 counts members in runs of ``unit`` (flattened channels)."""
    n_units = groups.shape[0] // unit
    unit_groups = groups[::unit][:n_units]
    sizes = torch.bincount(unit_groups, minlength=fold)
    s = int(sizes.min())
    starts = torch.cumsum(sizes, 0) - sizes
    units = starts[:, None] + torch.arange(s)[None, :]  # (f, s) unit indices
    return (units[:, :, None] * unit + torch.arange(unit)[None, None, :]).reshape(fold, s * unit)


def block_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, ndim: int) -> torch.Tensor:
    """1 where output slot == input slot, else 0; shape (out, in, 1, ...) for a weight of ``ndim`` dims."""
    mask = (out_groups[:, None] == in_groups[None, :]).float()
    return mask.view(*mask.shape, *([1] * (ndim - 2)))


@dataclass
class _Layer:
    module: nn.Module
    mask: torch.Tensor | None  # None for norm layers (per-channel parameters only)
    out_tie: torch.Tensor  # (f, s_out)
    in_tie: torch.Tensor | None  # (f, s_in); None for norm layers


def _plan(model: nn.Module, fold: int) -> list[_Layer]:
    layers: list[_Layer] = []
    channels: int | None = None
    for module in model.modules():
        if isinstance(module, WEIGHTED):
            if getattr(module, "groups", 1) != 1:
                raise ConfigError("slot warm-up supports ungrouped convolutions only; pass --slot-warmup 0")
            n_out, n_in = module.weight.shape[:2]
            if min(n_out, n_in) < fold:
                raise ConfigError(f"a layer of shape {tuple(module.weight.shape)} has fewer than {fold} channels; "
                                  "slot warm-up needs every layer to have at least f channels; "
                                  "pass --slot-warmup 0")
            out_g, in_g = slot_groups(n_out, fold), feature_groups(n_in, fold, channels)
            layers.append(_Layer(module, block_mask(out_g, in_g, module.weight.dim()),
                                 tie_index(out_g, fold), tie_index(in_g, fold, inputs_per_channel(n_in, channels))))
            channels = n_out
        elif isinstance(module, NORMS) and module.affine:
            layers.append(_Layer(module, None, tie_index(slot_groups(module.num_features, fold), fold), None))
    return layers


def _tied_view(tensor: torch.Tensor, layer: _Layer) -> tuple[torch.Tensor, ...]:
    """Advanced-index tuple selecting the (f, s_out[, s_in]) tied blocks of ``tensor``."""
    if layer.in_tie is None or tensor.dim() == 1:
        return (layer.out_tie,)
    return (layer.out_tie[:, :, None], layer.in_tie[:, None, :])


def _tie_(tensor: torch.Tensor, layer: _Layer) -> None:
    """Replace every slot's tied block of ``tensor`` by the mean over slots (in place)."""
    index = _tied_view(tensor, layer)
    blocks = tensor[index]
    tensor[index] = blocks.mean(dim=0, keepdim=True).expand_as(blocks)


class SlotWarmup:
    """Tied separate slots for ``epochs`` epochs, then untied and cross-slot weights phased in over
    ``epochs`` more.

    Use: ``warmup.separate()`` on a fresh model; ``warmup.begin_epoch(epoch)`` before an epoch;
    ``with warmup.blend(epoch, progress): optimizer.step()`` for each step (``progress`` in (0, 1] is
    the fraction of the epoch done).
    """

    def __init__(self, model: nn.Module, fold: int, epochs: int, *, tie: bool = True) -> None:
        self.fold, self.epochs, self.tie = fold, epochs, tie
        self.layers = _plan(model, fold) if fold > 1 and epochs > 0 else []
        self.handles: list[RemovableHandle] = []

    @property
    def active(self) -> bool:
        return bool(self.layers)

    def _params(self) -> Iterator[tuple[torch.Tensor, _Layer]]:
        for layer in self.layers:
            for param in (layer.module.weight, layer.module.bias):
                if param is not None:
                    yield param, layer

    @torch.no_grad()
    def separate(self) -> None:
        """Make the weights block-diagonal and the slots' tied blocks equal (for a fresh model; a
        resumed one loads its weights)."""
        for layer in self.layers:
            if layer.mask is not None:
                layer.module.weight.mul_(layer.mask.to(layer.module.weight) * math.sqrt(self.fold))
        if self.tie:
            for param, layer in self._params():
                index = _tied_view(param, layer)
                blocks = param[index]
                param[index] = blocks[:1].expand_as(blocks).clone()

    def _grad_hook(self, layer: _Layer):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            _tie_(grad, layer)
            return grad
        return hook

    def alpha(self, epoch: int, progress: float) -> float:
        """Share of each update the cross-slot weights (and the slots' own deviations) get: 0 while
        separate, then up to 1."""
        if not self.active or epoch < self.epochs:
            return 0.0 if self.active else 1.0
        return min(1.0, (epoch - self.epochs + progress) / self.epochs)

    def begin_epoch(self, epoch: int) -> None:
        """Tie the slots' gradients during the first ``epochs`` epochs only."""
        if self.active and self.tie and epoch < self.epochs and not self.handles:
            self.handles = [param.register_hook(self._grad_hook(layer)) for param, layer in self._params()]
        elif epoch >= self.epochs and self.handles:
            for handle in self.handles:
                handle.remove()
            self.handles = []

    @contextlib.contextmanager
    def blend(self, epoch: int, progress: float) -> Iterator[None]:
        """Around an optimiser step: keep only ``alpha`` of the step for the cross-slot weights and of
        each slot's deviation from the slots' mean step (``alpha`` = 0 while separate)."""
        alpha = self.alpha(epoch, progress)
        if not self.active or alpha >= 1.0:
            yield
            return
        params = list(self._params())
        before = [param.detach().clone() for param, _ in params]
        yield
        with torch.no_grad():
            for (param, layer), old in zip(params, before, strict=True):
                step = param - old
                if self.tie and epoch >= self.epochs:
                    index = _tied_view(step, layer)
                    blocks = step[index]
                    mean = blocks.mean(dim=0, keepdim=True)
                    step[index] = mean + alpha * (blocks - mean)
                if layer.mask is not None and param.dim() > 1:
                    mask = layer.mask.to(step)
                    step = step * mask + (1 - mask) * (alpha * step)
                param.copy_(old + step)
