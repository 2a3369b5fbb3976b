"""Building blocks shared by the model families."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from foldedcnns.errors import ConfigError, first_line


def conv3x3(in_channels: int, out_channels: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution with padding 1: keeps the spatial size at stride 1."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


def flat_features(features: nn.Module, input_shape: tuple[int, int, int], where: str) -> int:
    """Number of features after ``features`` for one input of shape (C, H, W).

    Found by running a zero tensor through the layers on the meta device (shapes only: nothing is
    allocated or computed, whatever the input size), so it is right for any stack.
    """
    tensors = itertools.chain(features.named_parameters(), features.named_buffers())
    meta = {name: torch.empty_like(value, device="meta") for name, value in tensors}
    with torch.no_grad():
        try:
            out = torch.func.functional_call(features, meta, (torch.zeros(1, *input_shape, device="meta"),))
        except RuntimeError as exc:
            raise ConfigError(
                f"{where}: input {input_shape[1]}x{input_shape[2]} is too small for this architecture "
                f"({first_line(exc)}); use a larger out-h/out-w"
            ) from exc
    return int(out[0].numel())


def init_weights(model: nn.Module) -> nn.Module:
    """The original's initialisation, applied to a freshly built model.

    Conv: Xavier-uniform with the ReLU gain (sqrt 2), bias 0. Linear: Normal(0, 0.01), bias 0.
    BatchNorm: weight 1, bias 0.
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight, gain=math.sqrt(2.0))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
