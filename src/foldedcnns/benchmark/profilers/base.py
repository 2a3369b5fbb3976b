"""Per-layer profile: where one call's time goes, and at what FLOPs/sec each layer runs.

For PyTorch backends (``eager``, ``channels-last``) every leaf module is timed with forward
pre/post hooks (the device is synchronized inside the hooks on CUDA). For ``onnxruntime`` the
session's own profiler gives per-node kernel times (ORT fuses Conv+ReLU, so a conv row includes
its ReLU). For ``openvino`` (fp32, bf16 and int8, NNCF-quantized on random input) the compiled
model's own performance counters (``PERF_COUNT``) give each executed node's time; OpenVINO fuses
ReLU and, at int8, the quantize steps into the convolutions. For ``compile`` (frozen inductor, CPU)
``torch.profiler`` times every op and generated kernel that inductor's code calls: oneDNN
convolutions (with their fused ReLU) and the ``cpp_fused_*`` kernels it writes for pooling, layout
copies and other elementwise work (kind ``pool`` when the kernel's name has ``max_pool``, else
``fused``). FLOPs per layer come from :func:`foldedcnns.analysis.count_flops` (2 x MACs of Conv2d
and Linear; pooling, ReLU and flatten count zero). Hooks and the profiler add a little overhead per
layer, so the shares are the thing to read, not the absolute total. :func:`profile_interleaved` profiles
several models (one task at f = 1..4) with their calls taking turns: their per-layer rates compare.
"""

from __future__ import annotations

from statistics import median

import copy
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from foldedcnns.analysis import count_flops
from foldedcnns.benchmark.timing import folded_inputs
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import (
    CompileBackend,
    OnnxRuntimeBackend,
    OpenVinoBackend,
    export_onnx_bytes,
    precision_dtype,
)
from foldedcnns.runtime.backends.quantize import is_quantized
from foldedcnns.runtime.device import resolve_device

TORCH_BACKENDS = ("eager", "channels-last")
PROFILE_BACKENDS = (*TORCH_BACKENDS, "compile", "onnxruntime", "openvino")
QUANTIZED_PROFILE_BACKENDS = ("openvino",)  # int8 profiles: OpenVINO's counters time the quantized nodes
COMPILED_CALL = "## Call CompiledFxGraph"  # torch.profiler's event around one call of inductor's code
COMPILED_CONV_OPS = ("mkldnn::_convolution_pointwise", "aten::convolution", "aten::mkldnn_convolution")
COMPILED_LINEAR_OPS = ("mkldnn::_linear_pointwise", "mkl::_mkl_linear", "aten::addmm", "aten::mm")
ORT_KINDS = {"Conv": "conv", "FusedConv": "conv", "Gemm": "linear", "FusedGemm": "linear", "MatMul": "linear",
             "FusedMatMul": "linear", "MaxPool": "pool",
             "Relu": "relu", "Flatten": "flatten", "ReorderInput": "reorder", "ReorderOutput": "reorder"}
OPENVINO_KINDS = {"Convolution": "conv", "GroupConvolution": "conv", "FullyConnected": "linear", "MatMul": "linear",
                  "MaxPool": "pool", "Relu": "relu", "Reorder": "reorder", "Reshape": "flatten"}
OPENVINO_SKIPPED = ("Parameter", "Result", "Constant")  # graph ends and weights: no kernel time


def openvino_kind(node_type: str) -> str:
    """The layer kind of an executed OpenVINO node (``FullyConnectedQuantizedLegacy`` is int8's linear;
    ``Subgraph`` is a fused elementwise kernel, at int8 the quantization of the input)."""
    if node_type.startswith("FullyConnected"):
        return "linear"
    return OPENVINO_KINDS.get(node_type, node_type.lower())
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


def can_profile(backend: str, precision: str) -> bool:
    """Whether :func:`profile_interleaved` can profile ``backend`` at ``precision``."""
    return backend in PROFILE_BACKENDS and (not is_quantized(precision) or backend in QUANTIZED_PROFILE_BACKENDS)


def profile_layers(model: nn.Module, *, backend: str = "channels-last", precision: str = "fp32",
                   batch_size: int = 1024, device: str = "cpu", warmup: int = 1, iterations: int = 3,
                   seed: int = 0) -> LayerProfile:
    """Profile ``model`` (with ``model.config``) at a nominal batch of ``batch_size`` images."""
    return profile_interleaved([model], backend=backend, precision=precision, batch_size=batch_size,
                               device=device, warmup=warmup, iterations=iterations, seed=seed)[0]


def profile_interleaved(models: Sequence[nn.Module], *, backend: str = "channels-last", precision: str = "fp32",
                        batch_size: int = 1024, device: str = "cpu", warmup: int = 1, iterations: int = 3,
                        seed: int = 0) -> list[LayerProfile]:
    """Profile several models (e.g. one task at f = 1..4) with their calls interleaved.

    After ``warmup`` untimed calls each, the models take turns, one recorded call each per round for
    ``iterations`` rounds, so load changes on the machine hit all of them alike; each layer's time is
    the median over rounds.
    """
    if not can_profile(backend, precision):
        if backend not in PROFILE_BACKENDS:
            raise ConfigError(f"per-layer profiles exist for {', '.join(PROFILE_BACKENDS)}, not {backend!r}")
        raise ConfigError(f"per-layer profiles of {precision} models exist for "
                          f"{', '.join(QUANTIZED_PROFILE_BACKENDS)} only; profile {backend} at fp32 or bf16")
    if iterations < 1 or warmup < 0:
        raise ConfigError(f"iterations must be >= 1 and warm-up >= 0, got {iterations} and {warmup}")
    dev = resolve_device(device)
    profilers: list[_TorchProfiler | _OrtProfiler | _CompileProfiler | _OpenVinoProfiler] = []
    for model in models:
        config = model.config
        inputs = folded_inputs(batch_size, config.fold)
        x = torch.rand(inputs, *config.input_shape, generator=torch.Generator().manual_seed(seed))
        flops = _layer_flops(model, inputs)
        if backend == "onnxruntime":
            profilers.append(_OrtProfiler(model, x, precision, flops))
        elif backend == "openvino":
            profilers.append(_OpenVinoProfiler(model, x, precision, flops))
        elif backend == "compile":
            profilers.append(_CompileProfiler(model, x, precision, dev, flops))
        else:
            profilers.append(_TorchProfiler(model, x, backend == "channels-last", precision, dev, flops))
    try:
        for profiler in profilers:
            for _ in range(warmup):
                profiler.call(record=False)
        for _ in range(iterations):
            for profiler in profilers:
                profiler.call(record=True)
        results = [profiler.layers() for profiler in profilers]
    finally:
        for profiler in profilers:
            profiler.close()
    return [LayerProfile(m.config.task.name, m.config.fold, backend, precision, batch_size,
                         folded_inputs(batch_size, m.config.fold) * m.config.fold, tuple(layers))
            for m, layers in zip(models, results, strict=True)]


class _TorchProfiler:
    """Forward pre/post hooks on every leaf module of a cast copy of the model."""

    def __init__(self, model: nn.Module, x: torch.Tensor, channels_last: bool, precision: str,
                 device: torch.device, flops: tuple[dict[str, float], list[float], list[float]]) -> None:
        dtype = precision_dtype(precision)
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.x = x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)
        self.device = device
        self.flops = flops[0]
        self.recording = False
        self.leaves = [(name, m) for name, m in self.model.named_modules() if not list(m.children())]
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
        with torch.inference_mode():
            self.model(self.x)
        self.recording = False

    def layers(self) -> list[LayerTime]:
        kinds = {name: TORCH_KINDS.get(type(m), type(m).__name__.lower()) for name, m in self.leaves}
        return [LayerTime(name, kinds[name], median(self.times[name]), self.flops.get(name, 0.0))
                for name, _ in self.leaves if self.times[name]]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


BackendT = TypeVar("BackendT", OnnxRuntimeBackend, OpenVinoBackend)


def _runnable(backend: BackendT, precision: str) -> BackendT:
    """``backend`` if it runs ``precision`` on the CPU here, else a one-line :class:`ConfigError`."""
    ok, reason = backend.is_available("cpu", precision)
    if not ok:
        raise ConfigError(f"cannot profile {backend.name} {precision}: {reason}")
    return backend


def _in_order(names: Sequence[str], kinds: Sequence[str], durations: dict[str, list[float]],
              convs: Sequence[float], linears: Sequence[float]) -> list[LayerTime]:
    """Rows in call order; conv and linear rows take the model's conv and linear FLOPs in order."""
    conv_iter, linear_iter = iter(convs), iter(linears)
    layers = []
    for name, kind in zip(names, kinds, strict=True):
        flops = next(conv_iter, 0.0) if kind == "conv" else next(linear_iter, 0.0) if kind == "linear" else 0.0
        layers.append(LayerTime(name, kind, median(durations[name]) if durations[name] else 0.0, flops))
    return layers


class _CompileProfiler:
    """``torch.profiler`` over the ops and kernels of a frozen inductor compilation (CPU)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, precision: str, device: torch.device,
                 flops: tuple[dict[str, float], list[float], list[float]]) -> None:
        if device.type != "cpu":
            raise ConfigError("per-layer profiles of the compile backend exist on the CPU only")
        import torch._inductor.config as inductor_config

        self.convs, self.linears = flops[1], flops[2]
        # kernel profiling makes inductor's generated kernels show up as profiler events
        with inductor_config.patch({"cpp.enable_kernel_profile": True}):
            self.prepared = CompileBackend().prepare(model, x, precision=precision, device=device)
        self.x = self.prepared.prepare_input(x)
        self.calls: list[list[tuple[str, float]]] = []

    def call(self, record: bool) -> None:
        from torch.profiler import ProfilerActivity, profile

        if not record:
            self.prepared.run(self.x)
            return
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.prepared.run(self.x)
        rows = []
        for e in prof.events():
            parent = e.cpu_parent
            if parent is not None and parent.name.startswith(COMPILED_CALL) and not e.name.startswith("aten::empty") \
                    and e.name != "aten::resize_":
                rows.append((e.name, e.cpu_time_total * 1e-6))  # microseconds
        self.calls.append(rows)

    @staticmethod
    def _kind(name: str) -> str:
        if name in COMPILED_CONV_OPS:
            return "conv"
        if name in COMPILED_LINEAR_OPS:
            return "linear"
        if "cpp_fused" in name:
            return "pool" if "max_pool" in name else "fused"
        return name.split("::")[-1].lower()

    def layers(self) -> list[LayerTime]:
        if not self.calls:
            return []
        names = [f"{i:02d} {name}" for i, (name, _) in enumerate(self.calls[0])]
        durations: dict[str, list[float]] = {n: [] for n in names}
        for rows in self.calls:
            for n, (_, seconds) in zip(names, rows, strict=False):
                durations[n].append(seconds)
        kinds = [self._kind(name) for name, _ in self.calls[0]]
        return _in_order(names, kinds, durations, self.convs, self.linears)

    def close(self) -> None:
        self.prepared.close()


class _OrtProfiler:
    """ONNX Runtime's own per-node profiler on a session of the exported model."""

    def __init__(self, model: nn.Module, x: torch.Tensor, precision: str,
                 flops: tuple[dict[str, float], list[float], list[float]]) -> None:
        import onnxruntime as ort

        backend = _runnable(OnnxRuntimeBackend(), precision)
        dtype = precision_dtype(precision)
        cpu_model = copy.deepcopy(model).to(dtype=dtype).eval()
        self.feed = {"x": x.to(dtype).numpy()}
        self.convs, self.linears = flops[1], flops[2]
        self.tmp = tempfile.TemporaryDirectory()
        options = backend.session_options()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(self.tmp.name) / "ort")
        self.session = ort.InferenceSession(export_onnx_bytes(cpu_model, x[:1].to(dtype)), options,
                                            providers=["CPUExecutionProvider"])
        self.recorded: list[bool] = []

    def call(self, record: bool) -> None:
        self.session.run(None, self.feed)
        self.recorded.append(record)

    def layers(self) -> list[LayerTime]:
        events = json.loads(Path(self.session.end_profiling()).read_text(encoding="utf-8"))
        nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
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
        layers = _in_order(names, kinds, durations, self.convs, self.linears)
        return [LayerTime(la.name.removesuffix("_kernel_time"), la.kind, la.seconds, la.flops) for la in layers]

    def close(self) -> None:
        self.tmp.cleanup()


class _OpenVinoProfiler:
    """OpenVINO's per-node performance counters on the model compiled as the ``openvino`` backend does."""

    def __init__(self, model: nn.Module, x: torch.Tensor, precision: str,
                 flops: tuple[dict[str, float], list[float], list[float]]) -> None:
        backend = _runnable(OpenVinoBackend(), precision)
        static = backend.graph(model, x, precision, model.config.fold, None).clone()
        static.reshape(list(x.shape))
        self.request = backend.compile(static, precision, {"PERF_COUNT": True}).create_infer_request()
        self.x = x.numpy()
        self.convs, self.linears = flops[1], flops[2]
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
        return _in_order(names, kinds, durations, self.convs, self.linears)

    def close(self) -> None:
        self.request = None
