"""CIFAR ResNet-18, folded and not.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, in the common CIFAR form
(3x3 stem with stride 1, no stem max-pool). Widths int(64m), int(128m), int(256m), int(512m).

Fixed quirk of the original (docs/models.md): its unfolded model pooled with ``AvgPool2d(4, padding=1)``,
which averages only the top-left 3x3 of the final 4x4 map. Every model here uses a global average
pool; parameters and multiply-accumulates are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from foldedcnns.models.layers import conv3x3
from foldedcnns.models.spec import TaskSpec, scaled
from foldedcnns.models.validate import MAX_BLOCKS, MAX_WIDTH, check_choice, check_int_list, check_keys

BLOCKS = ("basic",)
DEFAULT_LAYERS = [2, 2, 2, 2]
DEFAULT_WIDTHS = [64, 128, 256, 512]


def check_architecture(arch: Mapping[str, Any], height: int, width: int, where: str) -> dict[str, Any]:
    """Check a ResNet ``model-architecture``: block 'basic', 4 ``layers`` (blocks per stage) and 4 ``widths``.

    Any input size works: the stride-2 convolutions keep at least 1x1 and the pool is global.
    """
    path = "model-architecture"
    check_keys(arch, ("block", "layers", "widths"), where, path)
    out: dict[str, Any] = {}
    if "block" in arch:
        out["block"] = check_choice(arch["block"], BLOCKS, where, f"{path}.block")
    if "layers" in arch:
        out["layers"] = check_int_list(arch["layers"], 4, where, f"{path}.layers", 1, MAX_BLOCKS)
    if "widths" in arch:
        out["widths"] = check_int_list(arch["widths"], 4, where, f"{path}.widths", 1, MAX_WIDTH)
    return out


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a (projected when needed) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Input ``(G, C*f, 32, 32)``, output ``(G, K*f)``."""

    def __init__(self, in_channels: int, widths: Sequence[int], blocks: Sequence[int], num_outputs: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, widths[0], bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        in_planes = widths[0]
        for index, (planes, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if index == 0 else 2
            layers = []
            for block_index in range(count):
                layers.append(BasicBlock(in_planes, planes, stride if block_index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_planes, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.flatten(self.pool(out)))


def cifar_resnet(spec: TaskSpec, *, fold: int = 1, multiplier: float = 1.0) -> CifarResNet:
    """Build the CIFAR ResNet of ``spec`` (ResNet-18 for the shipped tasks) for fold f."""
    arch = check_architecture(spec.architecture, spec.height, spec.width, spec.source or spec.name)
    widths, blocks = arch.get("widths", DEFAULT_WIDTHS), arch.get("layers", DEFAULT_LAYERS)
    return CifarResNet(spec.in_channels * fold, [scaled(w, multiplier) for w in widths], blocks,
                       spec.num_classes * fold)
