"""Slot warm-up: start a FoldedCNN as f separate narrow CNNs, one per folded image, then let them mix.

Not in the original. A freshly initialised FoldedCNN mixes the f images of an input in every layer,
so at the start each image's logits depend as much on the other f - 1 images as on their own. On
hard tasks (the synthetic game crops) training then sits at chance level: the features carry too
little of each image's label to be worth keeping, Adam's sign-like updates of the cross-image
weights add more mixing noise, and the ReLUs die one by one (measured: f = 4 stays at loss ln(K)
for 1000+ steps at lr 1e-3 and 3e-4, with batch 32 to 256, with and without curriculum).

``SlotWarmup(model, f, epochs)`` fixes that without changing the architecture or its FLOPs:

1. every conv and linear weight is made block-diagonal over f contiguous channel groups (group j
   reads only group j of the layer before; the first layer's group j reads image j, the
   classifier's block j writes image j's logits), scaled by sqrt(f) to keep activation variance;
2. for ``epochs`` epochs the cross-group gradients are masked to zero, so the model trains as f
   independent CNNs of 1/f of the width, which leave the plateau as fast as the original CNN;
3. for ``epochs`` more epochs the cross-group weights (starting at zero) take a growing share,
   ``alpha`` from 0 to 1, of each optimiser update (Adam would otherwise move all of them by about
   the learning rate at once, which throws the model back to chance level); then they train like
   every other weight.

Channel groups are contiguous index ranges (``floor(i * f / n)``), which matches how folding stacks
images along channels, how a flatten lays out channel-major features, and how the classifier's
output holds one block of K logits per image. Everything is a function of (epoch, step), so a
resumed run continues the same schedule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from foldedcnns.errors import ConfigError


def slot_groups(n: int, fold: int) -> torch.Tensor:
    """Group (image slot) of each of ``n`` channels: ``floor(i * fold / n)``. Shape (n,)."""
    return torch.arange(n) * fold // n


def block_mask(weight: torch.Tensor, fold: int) -> torch.Tensor:
    """1 where output group == input group, else 0; broadcastable to ``weight`` (out, in, ...)."""
    out_g, in_g = slot_groups(weight.shape[0], fold), slot_groups(weight.shape[1], fold)
    mask = (out_g[:, None] == in_g[None, :]).to(weight.dtype).to(weight.device)
    return mask.view(*mask.shape, *([1] * (weight.dim() - 2)))


def _layers(model: nn.Module, fold: int) -> list[nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    for layer in layers:
        if getattr(layer, "groups", 1) != 1:
            raise ConfigError("slot warm-up supports ungrouped convolutions only; pass --slot-warmup 0")
        if min(layer.weight.shape[:2]) < fold:
            raise ConfigError(f"a layer of shape {tuple(layer.weight.shape)} has fewer than {fold} channels; "
                              "slot warm-up needs every layer to have at least f channels; pass --slot-warmup 0")
    return layers


class SlotWarmup:
    """Separate slots for ``epochs`` epochs, then phase the cross-slot weights in over ``epochs`` more.

    Use: ``warmup.begin_epoch(epoch)`` before an epoch; ``with warmup.blend(epoch, progress):
    optimizer.step()`` for each step (``progress`` in (0, 1] is the fraction of the epoch done).
    """

    def __init__(self, model: nn.Module, fold: int, epochs: int) -> None:
        self.fold, self.epochs = fold, epochs
        self.layers = _layers(model, fold) if fold > 1 and epochs > 0 else []
        self.masks = [block_mask(layer.weight, fold) for layer in self.layers]
        self.handles: list[RemovableHandle] = []

    @property
    def active(self) -> bool:
        return bool(self.layers)

    @torch.no_grad()
    def separate(self) -> None:
        """Make the weights block-diagonal (for a fresh model; a resumed one loads its weights)."""
        for layer, mask in zip(self.layers, self.masks, strict=True):
            layer.weight.mul_(mask * math.sqrt(self.fold))

    def alpha(self, epoch: int, progress: float) -> float:
        """Share of each update the cross-slot weights get: 0 while separate, then up to 1."""
        if not self.active or epoch < self.epochs:
            return 0.0 if self.active else 1.0
        return min(1.0, (epoch - self.epochs + progress) / self.epochs)

    def begin_epoch(self, epoch: int) -> None:
        """Mask cross-slot gradients during the first ``epochs`` epochs only."""
        if self.active and epoch < self.epochs and not self.handles:
            self.handles = [layer.weight.register_hook(lambda grad, mask=mask: grad * mask)
                            for layer, mask in zip(self.layers, self.masks, strict=True)]
        elif epoch >= self.epochs and self.handles:
            for handle in self.handles:
                handle.remove()
            self.handles = []

    @contextlib.contextmanager
    def blend(self, epoch: int, progress: float) -> Iterator[None]:
        """Around an optimiser step: keep only ``alpha`` of the step for the cross-slot weights."""
        alpha = self.alpha(epoch, progress)
        if not self.active or alpha >= 1.0 or epoch < self.epochs:
            yield
            return
        before = [layer.weight.detach().clone() for layer in self.layers]
        yield
        with torch.no_grad():
            for layer, mask, old in zip(self.layers, self.masks, before, strict=True):
                w = layer.weight
                w.copy_(w * mask + (1 - mask) * (old + alpha * (w - old)))

