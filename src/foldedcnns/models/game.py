"""Game-scraping CNN, built from a task description (templates ``1_3s_1_convnet`` and ``1_1_convnet``).

Kosaian et al., "Boosting the Throughput and Accelerator Utilization of Specialized CNN Inference
Beyond Increasing Batch Size", ICML 2021, Appendix A.1.

Template ``1_3s_1_convnet`` (every conv 3x3, stride 1, padding 1, bias, ReLU; m = width multiplier)::

    conv(C*f -> int(c1*m)), maxpool(3, stride 2)
    n-conv-units x [conv(-> int(ci*m)), conv, conv, maxpool(3, stride 1)]
    conv(-> int(cn*m)), maxpool(3, stride 2)
    flatten, linear(-> K*f)

``1_1_convnet`` is the same with one convolution per unit instead of three (as the original builds
it). The numbers sit directly under ``model-architecture`` or, as in the original's files, under
``model-architecture.params``; :func:`check_architecture` accepts both and returns the flat form.
``pool1_stride`` is read and ignored: the original hard-codes the first pool's stride to 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from foldedcnns.errors import ConfigError
from foldedcnns.models.layers import conv3x3, flat_features
from foldedcnns.models.spec import TaskSpec, scaled
from foldedcnns.models.validate import (
    MAX_POOL_STRIDE,
    MAX_UNITS,
    MAX_WIDTH,
    check_choice,
    check_keys,
    check_mapping,
    get_int,
)

CONVS_PER_UNIT = {"1_3s_1_convnet": 3, "1_1_convnet": 1}
DEFAULT_TEMPLATE = "1_3s_1_convnet"
POOL_KERNEL = 3
# Numbers of the game templates: (key, default, lowest, highest).
GAME_NUMBERS = (("n-conv-units", 1, 0, MAX_UNITS), ("conv1_n_feature_maps", 32, 1, MAX_WIDTH),
                ("convi_n_feature_maps", 32, 1, MAX_WIDTH), ("convn_n_feature_maps", 8, 1, MAX_WIDTH),
                ("pool1_stride", 2, 1, MAX_POOL_STRIDE))
NUMBER_KEYS = tuple(key for key, *_ in GAME_NUMBERS)


def spatial_path(size: int, units: int) -> list[int]:
    """One side through the pools: first pool (3, s2), one pool (3, s1) per unit, last pool (3, s2).

    Convs keep the size (padding 1). The list ends early, with a value below 3 (the pool kernel), where
    a pool has nothing left to take.
    """
    sizes = [size]
    for stride in [2] + [1] * units + [2]:
        if sizes[-1] < POOL_KERNEL:
            break
        sizes.append((sizes[-1] - POOL_KERNEL) // stride + 1)
    return sizes


def min_side(units: int) -> int:
    """Smallest input side the template takes with ``units`` conv units: 4 * units + 7."""
    return 4 * units + 7


def flat_architecture(arch: Mapping[str, Any], where: str) -> tuple[dict[str, Any], str]:
    """Check the keys and numbers of a game ``model-architecture`` (flat or nested ``params``).

    Returns the flat form (the template and the numbers given) and the path the numbers were under.
    """
    path = "model-architecture"
    check_keys(arch, ("template", "params", *NUMBER_KEYS), where, path)
    numbers, numbers_path = arch, path
    if "params" in arch:
        flat = [k for k in arch if k in NUMBER_KEYS]
        if flat:
            raise ConfigError(f"{where}: '{path}.{flat[0]}' is given next to '{path}.params'; put the numbers "
                              f"either under 'params' (the original's format) or directly under '{path}', not both")
        numbers, numbers_path = check_mapping(arch["params"], where, f"{path}.params"), f"{path}.params"
        check_keys(numbers, NUMBER_KEYS, where, numbers_path)
    out: dict[str, Any] = {"template": check_choice(arch.get("template", DEFAULT_TEMPLATE), CONVS_PER_UNIT, where,
                                                    f"{path}.template")}
    for key, default, low, high in GAME_NUMBERS:
        value = get_int(numbers, key, where, numbers_path, low, high, default)
        if key in numbers:
            out[key] = value
    return out, numbers_path


def check_architecture(arch: Mapping[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """Check a game ``model-architecture`` against the input size; returns the flat form."""
    out, numbers_path = flat_architecture(arch, where)
    units = out.get("n-conv-units", 1)
    for side_key, side in (("out-h", height), ("out-w", width)):
        if side < min_side(units):
            sizes = " -> ".join(map(str, spatial_path(side, units)))
            raise ConfigError(f"{where}: '{side_key}' {side} is too small for '{numbers_path}.n-conv-units' {units}: "
                              f"the pools leave no spatial extent ({sizes} -> none); use {side_key} >= "
                              f"{min_side(units)} or fewer conv units")
    return out


def game_layout(arch: Mapping[str, Any], where: str) -> tuple[int, int, int, int, int]:
    """Read (convs per unit, units, conv1, convi, convn feature maps) from a (flat or nested) architecture."""
    flat, _ = flat_architecture(arch, where)
    values = [flat.get(key, default) for key, default, *_ in GAME_NUMBERS[:4]]
    return (CONVS_PER_UNIT[flat["template"]], *values)


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
    check_architecture(spec.architecture, spec.height, spec.width, where)
    plan = game_plan(spec.architecture, multiplier, where)
    return GameCNN(spec.in_channels * fold, plan, spec.num_classes * fold, (spec.height, spec.width), where)
