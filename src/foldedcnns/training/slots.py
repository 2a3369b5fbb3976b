"""Slot warm-up: start a FoldedCNN as f separate narrow CNNs, one per folded image, then let them mix.

Not in the original. A freshly initialised FoldedCNN mixes the f images of an input in every layer,
so at the start each image's logits depend as much on the other f - 1 images as on their own; on
hard tasks (e.g. the synthetic game crops) training then sits at chance level for hundreds of steps
while Adam's updates of the cross-image weights add more mixing noise. ``slot_warmup`` epochs fix
that: every conv and linear weight is made block-diagonal over f contiguous channel groups (group j
reads only group j of the layer before; the first layer's group j reads image j, the classifier's
block j writes image j's logits), scaled by sqrt(f) to keep activation variance, and the gradients
of the cross-group blocks are masked to zero. After the warm-up the masks are removed and the
cross-group weights, starting at zero, train like every other weight. The architecture and FLOPs
never change.

Channel groups are contiguous index ranges (``floor(i * f / n)``), which matches how folding stacks
images along channels, how a flatten lays out channel-major features, and how the classifier's
output holds one block of K logits per image.
"""

from __future__ import annotations

import math

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


@torch.no_grad()
def separate_slots(model: nn.Module, fold: int) -> nn.Module:
    """Make every weight block-diagonal over ``fold`` slots (scaled by sqrt(fold)); in place."""
    if fold == 1:
        return model
    for layer in _layers(model, fold):
        layer.weight.mul_(block_mask(layer.weight, fold) * math.sqrt(fold))
    return model


def mask_cross_slot_gradients(model: nn.Module, fold: int) -> list[RemovableHandle]:
    """Zero the gradients of cross-slot weights; remove the returned handles to end the warm-up.

    With zero gradients (and zero weights), Adam, RMSprop and SGD with L2 weight decay leave those
    weights at exactly zero.
    """
    if fold == 1:
        return []
    handles = []
    for layer in _layers(model, fold):
        mask = block_mask(layer.weight, fold)
        handles.append(layer.weight.register_hook(lambda grad, mask=mask: grad * mask))
    return handles
