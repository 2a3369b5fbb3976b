"""Game-scraping CNN, built from a task description (templates ``1_3s_1_convnet`` and ``1_1_convnet``).

Kosaian et al., "Boosting the Throughput and Accelerator Utilization of Specialized CNN Inference
Beyond Increasing Batch Size", ICML 2021, Appendix A.1.

Template ``1_3s_1_convnet`` (every conv 3x3, stride 1, padding 1, bias, ReLU; m = width multiplier)::

    conv(C*f -> int(c1*m)), maxpool(3, stride 2)
    n-conv-units x [conv(-> int(ci*m)), conv, conv, maxpool(3, stride 1)]
    conv(-> int(cn*m)), maxpool(3, stride 2)
    flatten, linear(-> K*f)

``1_1_convnet`` is the same with one convolution per unit instead of three.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from foldedcnns.errors import ConfigError
from foldedcnns.models.layers import conv3x3, flat_features
from foldedcnns.models.spec import TaskSpec, scaled

CONVS_PER_UNIT = {"1_3s_1_convnet": 3, "1_1_convnet": 1}
POOL_KERNEL = 3


def game_layout(arch: Mapping[str, Any], where: str) -> tuple[int, int, int, int, int]:
    """Read (convs per unit, units, conv1, convi, convn feature maps) from a description."""
    template = arch.get("template", "1_3s_1_convnet")
    if template not in CONVS_PER_UNIT:
        raise ConfigError(
            f"{where}: unknown template {template!r}; use one of {', '.join(sorted(CONVS_PER_UNIT))}"
        )
    values = []
    for key, default in (("n-conv-units", 1), ("conv1_n_feature_maps", 32), ("convi_n_feature_maps", 32),
                         ("convn_n_feature_maps", 8)):
        value = arch.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "n-conv-units" else 1):
            raise ConfigError(f"{where}: model-architecture '{key}' must be a positive integer, got {value!r}")
        values.append(value)
    return (CONVS_PER_UNIT[template], *values)


class GameCNN(nn.Module):
    """A plain stack of 3x3 convs and max-pools with a linear classifier.

    ``plan`` lists the layers: ``("conv", out_channels)`` or ``("pool", stride)``.
    Input ``(G, in_channels, H, W)``, output ``(G, num_outputs)``.
    """

    def __init__(self, in_channels: int, plan: list[tuple[str, int]], num_outputs: int,
                 input_hw: tuple[int, int], where: str = "game CNN") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for kind, value in plan:
            if kind == "conv":
                layers += [conv3x3(channels, value), nn.ReLU(inplace=True)]
                channels = value
            else:
                layers.append(nn.MaxPool2d(kernel_size=POOL_KERNEL, stride=value))
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(flat_features(self.features, (in_channels, *input_hw), where), num_outputs)

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def game_plan(arch: Mapping[str, Any], multiplier: float, where: str) -> list[tuple[str, int]]:
    """The full layer plan of a game CNN at width multiplier m."""
    per_unit, units, c1, ci, cn = game_layout(arch, where)
    plan: list[tuple[str, int]] = [("conv", scaled(c1, multiplier)), ("pool", 2)]
    for _ in range(units):
        plan += [("conv", scaled(ci, multiplier))] * per_unit + [("pool", 1)]
    plan += [("conv", scaled(cn, multiplier)), ("pool", 2)]
    return plan


def game_cnn(spec: TaskSpec, *, fold: int = 1, multiplier: float = 1.0) -> GameCNN:
    """Build the game CNN of ``spec`` for fold f with hidden widths scaled by ``multiplier``."""
    where = spec.source or spec.name
    plan = game_plan(spec.architecture, multiplier, where)
    return GameCNN(spec.in_channels * fold, plan, spec.num_classes * fold, (spec.height, spec.width), where)
