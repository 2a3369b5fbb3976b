"""NoScope specialised CNNs (coral, night, taipei, roundabout).

Kang et al., "NoScope: Optimizing Neural Network Queries over Video at Scale", VLDB 2017
(Table 2 for the sizes). Every conv is 3x3, stride 1, padding 1, with bias; m = width multiplier::

    nb_layers/2 blocks, block i: conv(-> int(F*2^i*m)), ReLU, conv, ReLU, maxpool(2, 2)
    flatten, linear(-> int(D*m)), ReLU, linear(-> K*f)

The original defines 2- and 4-layer variants; even ``nb_layers`` beyond 4 follow the same rule.
The optional dropout of the original was never switched on and is not built.
"""

from __future__ import annotations

from torch import nn

from foldedcnns.errors import ConfigError
from foldedcnns.models.layers import conv3x3, flat_features
from foldedcnns.models.spec import TaskSpec, scaled


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
    arch = spec.architecture
    try:
        filters, dense, n_layers = int(arch["nb_filters"]), int(arch["nb_dense"]), int(arch["nb_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: NoScope model-architecture needs integer nb_filters, nb_dense, nb_layers") from exc
    if n_layers < 2 or n_layers % 2 or filters < 1 or dense < 1:
        raise ConfigError(f"{where}: nb_layers must be even and >= 2, nb_filters and nb_dense >= 1")
    blocks = [scaled(filters * 2**i, multiplier) for i in range(n_layers // 2)]
    return NoScopeCNN(spec.in_channels * fold, blocks, scaled(dense, multiplier), spec.num_classes * fold,
                      (spec.height, spec.width), where)
