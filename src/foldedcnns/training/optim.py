"""The optimiser and learning-rate schedule of a recipe (:mod:`foldedcnns.training.recipes`)."""

from __future__ import annotations

import torch
from torch import nn

from foldedcnns.training.recipes import Recipe


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """Adam, AdamW, RMSprop or SGD over every parameter, with the recipe's lr, weight decay and momentum."""
    params = model.parameters()
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum)
    return torch.optim.SGD(params, lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler | None:
    """StepLR, cosine annealing over the recipe's epochs, or None (constant lr); stepped once per epoch."""
    if recipe.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.lr_step_size, gamma=recipe.lr_gamma)
    if recipe.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    return None
