"""What every per-layer profiler shares: the result values, the FLOPs per layer and the profiler protocol.

A profiler times the layers of one model prepared by one engine. FLOPs per layer come from
:func:`foldedcnns.analysis.count_flops` (2 x MACs of Conv2d and Linear; pooling, ReLU and flatten count
zero). An engine that fuses or renames layers (ONNX Runtime, OpenVINO, inductor) reports its own
nodes in call order; its conv and linear rows take the model's conv and linear FLOPs in that order
(:func:`in_order`). Hooks and profilers add a little overhead per layer, so the shares are the thing
to read, not the absolute total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from foldedcnns.analysis import count_flops
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.engine import Engine


@dataclass(frozen=True)
class LayerTime:
    """One layer of one call: median seconds and FLOPs (0 for pooling, ReLU, flatten, reorders)."""

    name: str
    kind: str
    seconds: float
    flops: float

    @property
    def flops_per_sec(self) -> float | None:
        return self.flops / self.seconds if self.flops and self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops_per_sec": self.flops_per_sec}


@dataclass(frozen=True)
class LayerProfile:
    """Per-layer times of one configuration (one call of ``images`` images)."""

    model: str
    fold: int
    backend: str
    precision: str
    batch_size: int
    images: int
    layers: tuple[LayerTime, ...]

    @property
    def seconds(self) -> float:
        return sum(layer.seconds for layer in self.layers)

    def share(self, kind: str) -> float:
        """Fraction of the call's profiled time spent in layers of ``kind``."""
        total = self.seconds
        return sum(la.seconds for la in self.layers if la.kind == kind) / total if total else 0.0

    def flops_per_sec(self, kind: str | None = None) -> float:
        """FLOPs/sec over the layers of ``kind`` (all layers when None)."""
        layers = [la for la in self.layers if kind is None or la.kind == kind]
        seconds = sum(la.seconds for la in layers)
        return sum(la.flops for la in layers) / seconds if seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "layers"},
                "layers": [la.to_dict() for la in self.layers], "seconds": self.seconds}


class LayerFlops(NamedTuple):
    """FLOPs of one call: by module name, and the conv and linear layers' FLOPs in execution order."""

    by_name: dict[str, float]
    convs: tuple[float, ...]
    linears: tuple[float, ...]


def layer_flops(model: nn.Module, inputs: int) -> LayerFlops:
    """The :class:`LayerFlops` of one call of ``model`` on ``inputs`` folded inputs."""
    report = count_flops(model)
    return LayerFlops({la.name: 2.0 * la.macs * inputs for la in report.layers},
                      tuple(2.0 * la.macs * inputs for la in report.layers if la.kind == "conv"),
                      tuple(2.0 * la.macs * inputs for la in report.layers if la.kind == "linear"))


class LayerProfiler(Protocol):
    """One model prepared by one engine, its layers timed call by call.

    Made as ``Profiler(model, x, engine, flops)`` (``x``: the folded input ``(G, f*C, H, W)`` of every
    call); :func:`foldedcnns.benchmark.profilers.profile_interleaved` calls ``call(record=False)`` for
    the warm-up, ``call(record=True)`` once per round, then ``layers()`` and ``close()``.
    """

    def call(self, record: bool) -> None:
        """One call of the model; ``record``: time its layers."""

    def layers(self) -> list[LayerTime]:
        """Every layer in call order with its median time over the recorded calls."""

    def close(self) -> None:
        """Release what the profiler holds."""


def runnable(engine: Engine) -> Engine:
    """``engine`` if its backend runs its precision here, else a one-line :class:`ConfigError`."""
    ok, reason = engine.is_available()
    if not ok:
        raise ConfigError(f"cannot profile {engine.backend} {engine.precision}: {reason}")
    return engine


def in_order(names: Sequence[str], kinds: Sequence[str], durations: dict[str, list[float]],
             flops: LayerFlops) -> list[LayerTime]:
    """Rows in call order; conv and linear rows take the model's conv and linear FLOPs in order."""
    conv_iter, linear_iter = iter(flops.convs), iter(flops.linears)
    layers = []
    for name, kind in zip(names, kinds, strict=True):
        layer = next(conv_iter, 0.0) if kind == "conv" else next(linear_iter, 0.0) if kind == "linear" else 0.0
        layers.append(LayerTime(name, kind, median(durations[name]) if durations[name] else 0.0, layer))
    return layers


def cpu_only(engine: Engine) -> Engine:
    """The engine on the CPU: ONNX Runtime's and OpenVINO's profilers time a CPU session."""
    return engine if torch.device(engine.resolved().device).type == "cpu" else engine.replace(device="cpu")
