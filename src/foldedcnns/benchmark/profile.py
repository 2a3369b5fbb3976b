"""Per-layer profile: where one call's time goes, and at what FLOPs/sec each layer runs.

For PyTorch backends (``eager``, ``channels-last``) every leaf module is timed with forward
pre/post hooks (the device is synchronized inside the hooks on CUDA). For ``onnxruntime`` the
session's own profiler gives per-node kernel times (ORT fuses Conv+ReLU, so a conv row includes
its ReLU). FLOPs per layer come from :func:`foldedcnns.analysis.count_flops` (2 x MACs of Conv2d
and Linear; pooling, ReLU and flatten count zero). Hooks add a little overhead per layer, so the
shares are the thing to read, not the absolute total.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foldedcnns.analysis import count_flops
from foldedcnns.benchmark.backends import OnnxRuntimeBackend, export_onnx_bytes, precision_dtype, resolve_device
from foldedcnns.benchmark.runner import median
from foldedcnns.benchmark.timing import folded_inputs
from foldedcnns.errors import ConfigError

TORCH_BACKENDS = ("eager", "channels-last")
PROFILE_BACKENDS = (*TORCH_BACKENDS, "onnxruntime")
ORT_KINDS = {"Conv": "conv", "FusedConv": "conv", "Gemm": "linear", "FusedGemm": "linear", "MatMul": "linear",
             "FusedMatMul": "linear", "MaxPool": "pool",
             "Relu": "relu", "Flatten": "flatten", "ReorderInput": "reorder", "ReorderOutput": "reorder"}
TORCH_KINDS = {nn.Conv2d: "conv", nn.Linear: "linear", nn.MaxPool2d: "pool", nn.AvgPool2d: "pool",
               nn.ReLU: "relu", nn.Flatten: "flatten", nn.BatchNorm2d: "norm"}


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


def _layer_flops(model: nn.Module, inputs: int) -> tuple[dict[str, float], list[float], list[float]]:
    """FLOPs per call by module name, and the conv and linear FLOPs in execution order."""
    report = count_flops(model)
    by_name = {la.name: 2.0 * la.macs * inputs for la in report.layers}
    convs = [2.0 * la.macs * inputs for la in report.layers if la.kind == "conv"]
    linears = [2.0 * la.macs * inputs for la in report.layers if la.kind == "linear"]
    return by_name, convs, linears


def profile_layers(model: nn.Module, *, backend: str = "channels-last", precision: str = "fp32",
                   batch_size: int = 1024, device: str = "cpu", warmup: int = 1, iterations: int = 3,
                   seed: int = 0) -> LayerProfile:
    """Profile ``model`` (with ``model.config``) at a nominal batch of ``batch_size`` images."""
    if backend not in PROFILE_BACKENDS:
        raise ConfigError(f"per-layer profiles exist for {', '.join(PROFILE_BACKENDS)}, not {backend!r}")
    if iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    config = model.config
    dev = resolve_device(device)
    inputs = folded_inputs(batch_size, config.fold)
    x = torch.rand(inputs, *config.input_shape, generator=torch.Generator().manual_seed(seed))
    by_name, convs, linears = _layer_flops(model, inputs)
    if backend == "onnxruntime":
        layers = _profile_ort(model, x, precision, warmup, iterations, convs, linears)
    else:
        layers = _profile_torch(model, x, backend == "channels-last", precision, dev, warmup, iterations, by_name)
    return LayerProfile(config.task.name, config.fold, backend, precision, batch_size, inputs * config.fold,
                        tuple(layers))


def _profile_torch(model: nn.Module, x: torch.Tensor, channels_last: bool, precision: str, device: torch.device,
                   warmup: int, iterations: int, flops: dict[str, float]) -> list[LayerTime]:
    dtype = precision_dtype(precision)
    model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    times: dict[str, list[float]] = {name: [] for name, _ in leaves}
    started: dict[str, float] = {}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def pre(name: str):
        def hook(_module: nn.Module, _inputs: Any) -> None:
            sync()
            started[name] = time.perf_counter()
        return hook

    def post(name: str):
        def hook(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            sync()
            times[name].append(time.perf_counter() - started[name])
        return hook

    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        handles = []
        for name, module in leaves:
            handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name))]
        try:
            for _ in range(iterations):
                model(x)
        finally:
            for handle in handles:
                handle.remove()
    kinds = {name: TORCH_KINDS.get(type(m), type(m).__name__.lower()) for name, m in leaves}
    return [LayerTime(name, kinds[name], median(times[name]), flops.get(name, 0.0)) for name, _ in leaves
            if times[name]]


def _profile_ort(model: nn.Module, x: torch.Tensor, precision: str, warmup: int, iterations: int,
                 convs: Sequence[float], linears: Sequence[float]) -> list[LayerTime]:
    import onnxruntime as ort

    backend = OnnxRuntimeBackend()
    ok, reason = backend.is_available("cpu", precision)
    if not ok:
        raise ConfigError(f"cannot profile onnxruntime {precision}: {reason}")
    dtype = precision_dtype(precision)
    cpu_model = copy.deepcopy(model).to(dtype=dtype).eval()
    x = x.to(dtype)
    with tempfile.TemporaryDirectory() as tmp:
        options = backend.session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(export_onnx_bytes(cpu_model, x[:1]), options,
                                       providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}
        for _ in range(warmup + iterations):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    names = list(dict.fromkeys(e["name"] for e in nodes))
    per_run = len(names)
    runs = len(nodes) // per_run if per_run else 0
    timed = nodes[warmup * per_run: runs * per_run]
    durations: dict[str, list[float]] = {n: [] for n in names}
    ops: dict[str, str] = {}
    for e in timed:
        durations[e["name"]].append(e["dur"] * 1e-6)  # microseconds
        ops[e["name"]] = e.get("args", {}).get("op_name", "")
    conv_iter, linear_iter = iter(convs), iter(linears)
    layers = []
    for name in names:
        kind = ORT_KINDS.get(ops.get(name, ""), ops.get(name, "").lower() or "other")
        flops = next(conv_iter, 0.0) if kind == "conv" else next(linear_iter, 0.0) if kind == "linear" else 0.0
        label = name.removesuffix("_kernel_time")
        layers.append(LayerTime(label, kind, median(durations[name]) if durations[name] else 0.0, flops))
    return layers
