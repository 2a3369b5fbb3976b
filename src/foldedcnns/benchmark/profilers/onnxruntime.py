"""Per-layer times of the ``onnxruntime`` engine: ONNX Runtime's own per-node profiler.

The session is the backend's own (its export and session settings), with profiling switched on in its
session options; the profile's per-node kernel times are read back after the calls. ORT fuses
Conv+ReLU, so a conv row includes its ReLU. The session runs on the CPU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from foldedcnns.benchmark.profilers.base import LayerFlops, LayerTime, cpu_only, in_order, runnable
from foldedcnns.runtime.backends import OnnxRuntimeBackend, Runner

if TYPE_CHECKING:
    from foldedcnns.runtime.engine import Engine

ORT_KINDS = {"Conv": "conv", "FusedConv": "conv", "Gemm": "linear", "FusedGemm": "linear", "MatMul": "linear",
             "FusedMatMul": "linear", "MaxPool": "pool",
             "Relu": "relu", "Flatten": "flatten", "ReorderInput": "reorder", "ReorderOutput": "reorder"}
NODE_SUFFIX = "_kernel_time"


class ProfilingOnnxRuntime(OnnxRuntimeBackend):
    """The ``onnxruntime`` backend whose sessions write ONNX Runtime's profile under ``prefix`` (not
    registered: the profiler prepares through it directly); ``session`` is the last one built."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.session: Any = None

    def session_options(self, threads: int | None = None) -> Any:  # type: ignore[override]
        options = OnnxRuntimeBackend.session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = self.prefix
        return options

    def build(self, model: nn.Module, example: torch.Tensor, engine: Engine, fold: int) -> Runner:
        runner = super().build(model, example, engine, fold)
        self.session = runner.keep[0]
        return runner


class OrtProfiler:
    """ONNX Runtime's own per-node profiler on the backend's session of the exported model."""

    backends: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    quantized: ClassVar[bool] = False

    def __init__(self, model: nn.Module, x: torch.Tensor, engine: Engine, flops: LayerFlops) -> None:
        engine = runnable(cpu_only(engine))
        self.flops = flops
        self.tmp = tempfile.TemporaryDirectory()
        self.backend = ProfilingOnnxRuntime(str(Path(self.tmp.name) / "ort"))
        self.prepared = self.backend.prepare(model, x, engine)
        self.x = self.prepared.prepare_input(x)
        self.recorded: list[bool] = [False]  # the preparation's one check call is in the profile too

    def call(self, record: bool) -> None:
        self.prepared.run(self.x)
        self.recorded.append(record)

    def layers(self) -> list[LayerTime]:
        events = json.loads(Path(self.backend.session.end_profiling()).read_text(encoding="utf-8"))
        nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith(NODE_SUFFIX)]
        names = list(dict.fromkeys(e["name"] for e in nodes))
        per_run = len(names)
        durations: dict[str, list[float]] = {n: [] for n in names}
        ops: dict[str, str] = {}
        for run, recorded in enumerate(self.recorded):
            if not recorded:
                continue
            for e in nodes[run * per_run:(run + 1) * per_run]:
                durations[e["name"]].append(e["dur"] * 1e-6)  # microseconds
                ops[e["name"]] = e.get("args", {}).get("op_name", "")
        kinds = [ORT_KINDS.get(ops.get(name, ""), ops.get(name, "").lower() or "other") for name in names]
        return [LayerTime(la.name.removesuffix(NODE_SUFFIX), la.kind, la.seconds, la.flops)
                for la in in_order(names, kinds, durations, self.flops)]

    def close(self) -> None:
        self.prepared.close()
        self.tmp.cleanup()
