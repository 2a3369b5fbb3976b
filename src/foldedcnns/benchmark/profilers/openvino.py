"""Per-layer times of the ``openvino`` engine: the compiled model's own performance counters.

The graph is the backend's own (converted, and at int8 NNCF-quantized on the engine's calibration or
random input), compiled as the backend compiles it plus ``PERF_COUNT``; each executed node's time is
read after every recorded call. OpenVINO fuses ReLU and, at int8, the quantize steps into the
convolutions. It runs on the CPU.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from foldedcnns.benchmark.profilers.base import LayerFlops, LayerTime, cpu_only, in_order, runnable
from foldedcnns.runtime.backends.base import model_fold
from foldedcnns.runtime.backends.openvino import OpenVinoBackend, compile_openvino
from foldedcnns.runtime.engine import Engine

OPENVINO_KINDS = {"Convolution": "conv", "GroupConvolution": "conv", "FullyConnected": "linear", "MatMul": "linear",
                  "MaxPool": "pool", "Relu": "relu", "Reorder": "reorder", "Reshape": "flatten"}
OPENVINO_SKIPPED = ("Parameter", "Result", "Constant")  # graph ends and weights: no kernel time


def openvino_kind(node_type: str) -> str:
    """The layer kind of an executed OpenVINO node (``FullyConnectedQuantizedLegacy`` is int8's linear;
    ``Subgraph`` is a fused elementwise kernel, at int8 the quantization of the input)."""
    if node_type.startswith("FullyConnected"):
        return "linear"
    return OPENVINO_KINDS.get(node_type, node_type.lower())


class OpenVinoProfiler:
    """OpenVINO's per-node performance counters on the model compiled as the ``openvino`` backend does."""

    backends: ClassVar[tuple[str, ...]] = ("openvino",)
    quantized: ClassVar[bool] = True  # int8 profiles: the counters time the quantized nodes

    def __init__(self, model: nn.Module, x: torch.Tensor, engine: Engine, flops: LayerFlops) -> None:
        engine = runnable(cpu_only(engine))
        backend = engine.runner
        if not isinstance(backend, OpenVinoBackend):
            raise TypeError(f"the {engine.backend} backend is not an OpenVINO backend")
        static = backend.graph(model, x, engine.precision, model_fold(model), engine.calibration).clone()
        static.reshape(list(x.shape))
        compiled = compile_openvino(static, engine.precision, threads=engine.threads, hint=backend.PERFORMANCE_HINT,
                                    extra={"PERF_COUNT": True})
        self.request: Any = compiled.create_infer_request()
        self.x = x.numpy()
        self.flops = flops
        self.calls: list[list[tuple[str, str, float]]] = []

    def call(self, record: bool) -> None:
        self.request.infer({0: self.x})
        if record:
            self.calls.append([(i.node_name, i.node_type, i.real_time.total_seconds())
                               for i in self.request.get_profiling_info()
                               if i.node_type not in OPENVINO_SKIPPED and str(i.status).endswith("EXECUTED")])

    def layers(self) -> list[LayerTime]:
        if not self.calls:
            return []
        names = [name for name, _, _ in self.calls[0]]
        durations: dict[str, list[float]] = {n: [] for n in names}
        for rows in self.calls:
            for name, _, seconds in rows:
                durations.setdefault(name, []).append(seconds)
        kinds = [openvino_kind(kind) for _, kind, _ in self.calls[0]]
        return in_order(names, kinds, durations, self.flops)

    def close(self) -> None:
        self.request = None
