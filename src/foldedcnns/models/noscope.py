"""NoScope specialised CNNs (coral, night, taipei, roundabout).

Kang et al., "NoScope: Optimizing Neural Network Queries over Video at Scale", VLDB 2017
(Table 2 for the sizes). Every conv is 3x3, stride 1, padding 1, with bias; m = width multiplier::

    nb_layers/2 blocks, block i: conv(-> int(F*2^i*m)), ReLU, conv, ReLU, maxpool(2, 2)
    flatten, linear(-> int(D*m)), ReLU, linear(-> K*f)

The original defines 2- and 4-layer variants; even ``nb_layers`` beyond 4 follow the same rule.
The optional dropout of the original was never switched on and is not built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from foldedcnns.errors import ConfigError
from foldedcnns.models.layers import conv3x3, flat_features
from foldedcnns.models.spec import TaskSpec, scaled
from foldedcnns.models.validate import MAX_DENSE, MAX_NOSCOPE_LAYERS, MAX_WIDTH, check_keys, get_int

# (key, lowest, highest); all three are required.
NOSCOPE_NUMBERS = (("nb_filters", 1, MAX_WIDTH), ("nb_dense", 1, MAX_DENSE), ("nb_layers", 2, MAX_NOSCOPE_LAYERS))


def check_architecture(arch: Mapping[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """Check a NoScope ``model-architecture``: integer nb_filters, nb_dense and an even nb_layers whose
    max-pools (one per 2 layers, each halving the size) leave at least 1x1."""
    path = "model-architecture"
    check_keys(arch, [key for key, *_ in NOSCOPE_NUMBERS], where, path)
    out = {key: get_int(arch, key, where, path, low, high) for key, low, high in NOSCOPE_NUMBERS}
    if out["nb_layers"] % 2:
        raise ConfigError(f"{where}: '{path}.nb_layers' must be even (2 convolutions per block), "
                          f"got {out['nb_layers']}")
    blocks = out["nb_layers"] // 2
    for side_key, side in (("out-h", height), ("out-w", width)):
        if side >> blocks < 1:
            raise ConfigError(f"{where}: '{side_key}' {side} is too small for '{path}.nb_layers' "
                              f"{out['nb_layers']}: {blocks} max-pools of stride 2 leave no spatial extent; "
                              f"use {side_key} >= {2 ** blocks}")
    return out


class NoScopeCNN(nn.Module):
    """Input ``(G, C*f, 50, 50)``, output ``(G, K*f)``."""

    def __init__(self, in_channels: int, block_channels: list[int], dense: int, num_outputs: int,
                 input_hw: tuple[int, int], where: str = "NoScope CNN") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in block_channels:
            layers += [conv3x3(channels, width), nn.ReLU(inplace=True), conv3x3(width, width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, 2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        flat = flat_features(self.features, (in_channels, *input_hw), where)
        self.classifier = nn.Sequential(nn.Linear(flat, dense), nn.ReLU(inplace=True), nn.Linear(dense, num_outputs))

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def noscope_cnn(spec: TaskSpec, *, fold: int = 1, multiplier: float = 1.0) -> NoScopeCNN:
    """Build the NoScope CNN of ``spec`` for fold f with hidden widths scaled by ``multiplier``."""
    where = spec.source or spec.name
    arch = check_architecture(spec.architecture, spec.height, spec.width, where)
    filters, dense, n_layers = arch["nb_filters"], arch["nb_dense"], arch["nb_layers"]
    blocks = [scaled(filters * 2**i, multiplier) for i in range(n_layers // 2)]
    return NoScopeCNN(spec.in_channels * fold, blocks, scaled(dense, multiplier), spec.num_classes * fold,
                      (spec.height, spec.width), where)
