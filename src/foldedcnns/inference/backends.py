"""How the folded model runs inside a :class:`~foldedcnns.inference.predictor.Predictor`.

A runner maps a folded batch ``(G, f*C, H, W)`` to logits ``(G, f*K)``. ``eager`` is the PyTorch
module itself; the other backends come from :mod:`foldedcnns.benchmark` so prediction and benchmark
run the model the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from foldedcnns.errors import ConfigError
from foldedcnns.models.registry import ModelConfig

Runner = Callable[[torch.Tensor], torch.Tensor]
EAGER = "eager"


def available_backends() -> list[str]:
    """Backend names usable on this machine."""
    return [EAGER]


def make_runner(model: nn.Module, backend: str, *, config: ModelConfig, device: torch.device,
                batch_size: int) -> Runner:
    """Wrap ``model`` (already on ``device``, eval mode) for ``backend``."""
    if backend == EAGER:
        return model
    raise ConfigError(f"unknown backend {backend!r}; pass one of {', '.join(available_backends())}")
