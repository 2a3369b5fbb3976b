"""Per-layer times of the PyTorch engines (``eager``, ``channels-last``): hooks on every leaf module.

The model is prepared by its engine (the backend's own cast copy and input conversion); forward
pre/post hooks on every leaf module of that copy time each layer (the device is synchronized inside
the hooks on CUDA).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median
from typing import Any, ClassVar

import torch
from torch import nn

from foldedcnns.benchmark.profilers.base import LayerFlops, LayerTime
from foldedcnns.runtime.engine import Engine

TORCH_KINDS = {nn.Conv2d: "conv", nn.Linear: "linear", nn.MaxPool2d: "pool", nn.AvgPool2d: "pool",
               nn.ReLU: "relu", nn.Flatten: "flatten", nn.BatchNorm2d: "norm"}


class HookProfiler:
    """Forward pre/post hooks on every leaf module of the engine's copy of the model."""

    backends: ClassVar[tuple[str, ...]] = ("eager", "channels-last")
    quantized: ClassVar[bool] = False

    def __init__(self, model: nn.Module, x: torch.Tensor, engine: Engine, flops: LayerFlops) -> None:
        self.prepared = engine.runner.prepare(model, x, engine)
        if self.prepared.module is None:
            raise TypeError(f"the {engine.backend} backend keeps no PyTorch module to hook")
        self.x = self.prepared.prepare_input(x)
        self.device = self.prepared.device
        self.flops = flops.by_name
        self.recording = False
        self.leaves = [(name, m) for name, m in self.prepared.module.named_modules() if not list(m.children())]
        self.times: dict[str, list[float]] = {name: [] for name, _ in self.leaves}
        self.started: dict[str, float] = {}
        self.handles = []
        for name, module in self.leaves:
            self.handles += [module.register_forward_pre_hook(self._pre(name)),
                             module.register_forward_hook(self._post(name))]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pre(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any) -> None:
            if self.recording:
                self._sync()
                self.started[name] = time.perf_counter()
        return hook

    def _post(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            if self.recording:
                self._sync()
                self.times[name].append(time.perf_counter() - self.started[name])
        return hook

    def call(self, record: bool) -> None:
        self.recording = record
        try:
            self.prepared.run(self.x)
        finally:
            self.recording = False

    def layers(self) -> list[LayerTime]:
        kinds = {name: TORCH_KINDS.get(type(m), type(m).__name__.lower()) for name, m in self.leaves}
        return [LayerTime(name, kinds[name], median(self.times[name]), self.flops.get(name, 0.0))
                for name, _ in self.leaves if self.times[name]]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.prepared.close()
