"""Execution backends: one small class per way of running a model, behind one interface.

Every backend answers :meth:`Backend.is_available` (``(ok, reason)``: is it installed, does it run
on this device at this precision) and :meth:`Backend.prepare`, which turns an eval-mode model and
an example folded input ``(G, f*C, H, W)`` into a :class:`Prepared` runner. Preparing does all
one-off work (casting, layout change, compilation, ONNX export, CUDA-graph capture) and one
check call, so an unsupported kernel shows up there as :class:`BackendUnavailable` (a one-line
reason), never in the middle of a timed loop.

Backends (``BACKENDS``):

* ``eager``: the PyTorch module, NCHW.
* ``channels-last``: the module and input in ``torch.channels_last`` (NHWC) memory format, which
  lets oneDNN (CPU) and cuDNN (GPU) pick their NHWC kernels.
* ``compile``: ``torch.compile`` of the channels-last module (inductor, frozen weights, static
  shapes; a new batch size compiles again, about 10 s per shape on a 2-core CPU).
* ``onnxruntime``: the module exported to ONNX in memory and run by ONNX Runtime (CPU provider, or
  the CUDA provider with I/O binding on GPU tensors).
* ``cuda-graphs``: the channels-last module captured once into a CUDA graph and replayed (CUDA only).

Precisions (``PRECISIONS``): ``fp32``, ``bf16`` and ``fp16``. A reduced precision casts the weights
and the input (``model.to(dtype)``), so every layer runs in that type; logits come back as float32.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from foldedcnns.errors import ConfigError, FoldedCNNsError

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ONNX_OPSET = 17
# Dynamo recompiles a shared ``forward`` once per model and input shape; the default limit (8) would
# silently fall back to eager in a sweep, so a benchmark raises it and makes hitting it an error.
COMPILE_RECOMPILE_LIMIT = 1024


class BackendUnavailable(FoldedCNNsError):
    """A backend or precision that cannot run here; the message is the one-line reason."""


@dataclass
class Prepared:
    """A model made ready by one backend at one precision on one device.

    ``run`` takes an input already made by ``prepare_input`` (right dtype, layout and device, or a
    NumPy array for ONNX Runtime) and returns the backend's raw output; this is what a benchmark
    times. Calling the object itself takes any float batch ``(G, f*C, H, W)`` and returns float32
    logits ``(G, f*K)`` as a torch tensor on the device.
    """

    backend: str
    precision: str
    device: torch.device
    run: Callable[[Any], Any]
    prepare_input: Callable[[torch.Tensor], Any]
    to_tensor: Callable[[Any], torch.Tensor]
    setup_seconds: float = 0.0
    keep: list[Any] = field(default_factory=list, repr=False)  # objects the runner needs alive

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.to_tensor(self.run(self.prepare_input(x))).float()


def precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def resolve_device(device: str | torch.device) -> torch.device:
    """``cpu`` or ``cuda[:i]``; CUDA without a GPU is a one-line error."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {dev.type!r} is not supported; use cpu or cuda")
    return dev


def _device_precision_check(device: torch.device, precision: str) -> tuple[bool, str]:
    precision_dtype(precision)
    if device.type == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available on this machine; use --device cpu"
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return False, "this GPU has no bf16 support"
    return True, ""


def _check_call(prepared: Prepared, example: torch.Tensor) -> Prepared:
    """Run once so a missing kernel is a :class:`BackendUnavailable`, not a crash in a timed loop."""
    try:
        out = prepared.to_tensor(prepared.run(prepared.prepare_input(example)))
    except RuntimeError as exc:  # also NotImplementedError and dynamo/inductor failures
        raise BackendUnavailable(_first_line(exc)) from exc
    if out.shape[0] != example.shape[0]:
        raise BackendUnavailable(f"returned {out.shape[0]} rows for {example.shape[0]} inputs")
    return prepared


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


class Backend:
    """Interface: ``is_available(device, precision)`` and ``prepare(model, example, ...)``."""

    name: str = ""
    description: str = ""
    static_shapes: bool = False  # True: one preparation per input shape (compilation, graph capture)

    def is_available(self, device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[bool, str]:
        return _device_precision_check(torch.device(device), precision)

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu") -> Prepared:
        raise NotImplementedError

    def _require(self, device: torch.device, precision: str) -> None:
        ok, reason = self.is_available(device, precision)
        if not ok:
            raise BackendUnavailable(reason)


def _torch_model(model: nn.Module, device: torch.device, precision: str, channels_last: bool) -> nn.Module:
    """A cast copy of ``model``: preparing never changes the caller's module."""
    model = copy.deepcopy(model).to(device=device, dtype=precision_dtype(precision)).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _torch_input(device: torch.device, precision: str, channels_last: bool) -> Callable[[torch.Tensor], Any]:
    dtype = precision_dtype(precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def prepare_input(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)

    return prepare_input


def _inference(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(x)

    return run


class EagerBackend(Backend):
    name = "eager"
    description = "PyTorch eager, NCHW"
    channels_last = False

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu") -> Prepared:
        device = torch.device(device)
        self._require(device, precision)
        start = time.perf_counter()
        model = _torch_model(model, device, precision, self.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        prepared = Prepared(self.name, precision, device, _inference(model),
                            _torch_input(device, precision, self.channels_last), lambda y: y, keep=[model])
        _check_call(prepared, example)
        prepared.setup_seconds = time.perf_counter() - start
        return prepared


class ChannelsLastBackend(EagerBackend):
    name = "channels-last"
    description = "PyTorch eager, channels-last (NHWC) memory format"
    channels_last = True


@contextlib.contextmanager
def compile_limits() -> Iterator[None]:
    """Raise dynamo's recompile limits and make hitting them an error instead of a silent eager fallback."""
    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit") if hasattr(config, n)]
    saved = {n: getattr(config, n) for n in names}
    saved_fail = getattr(config, "fail_on_recompile_limit_hit", None)
    try:
        for n in names:
            setattr(config, n, max(saved[n], COMPILE_RECOMPILE_LIMIT))
        if saved_fail is not None:
            config.fail_on_recompile_limit_hit = True
        yield
    finally:
        for n, v in saved.items():
            setattr(config, n, v)
        if saved_fail is not None:
            config.fail_on_recompile_limit_hit = saved_fail


@contextlib.contextmanager
def inductor_freezing(enabled: bool) -> Iterator[None]:
    """Inductor's ``freezing`` option set to ``enabled`` while a model compiles (its first call)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=enabled):
        yield


class CompileBackend(Backend):
    """``torch.compile`` with inductor, static shapes, and by default *freezing*: the weights are
    treated as constants, so inductor folds them, prepacks them for oneDNN on the CPU and fuses each
    convolution with its ReLU (PyTorch's recommended setting for CPU inference). Model and input are
    channels-last (NHWC), which saves a layout copy of the input (1.2x at B = 256 on this CPU). On this
    project's CPU, bf16 ran about 2x faster than eager channels-last bf16 (docs/benchmarks.md). A frozen
    model no longer sees later changes to the module's weights; prepare again after training."""

    name = "compile"
    description = "torch.compile (inductor, frozen weights), static shapes"
    static_shapes = True

    def __init__(self, mode: str | None = None, freeze: bool = True) -> None:
        self.mode = mode
        self.freeze = freeze

    def is_available(self, device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[bool, str]:
        if not hasattr(torch, "compile"):
            return False, "this torch has no torch.compile"
        return _device_precision_check(torch.device(device), precision)

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu") -> Prepared:
        device = torch.device(device)
        self._require(device, precision)
        start = time.perf_counter()
        model = _torch_model(model, device, precision, channels_last=True)
        compiled = torch.compile(model, mode=self.mode, dynamic=False)
        freeze = self.freeze

        def run(x: torch.Tensor) -> torch.Tensor:
            with compile_limits(), inductor_freezing(freeze), torch.inference_mode():  # a new shape compiles
                return compiled(x)

        prepared = Prepared(self.name, precision, device, run, _torch_input(device, precision, True),
                            lambda y: y, keep=[model, compiled])
        _check_call(prepared, example)  # compiles; an inductor failure is a RuntimeError -> unavailable
        prepared.setup_seconds = time.perf_counter() - start
        return prepared


class CudaGraphsBackend(Backend):
    name = "cuda-graphs"
    description = "channels-last module captured into a CUDA graph and replayed (CUDA only)"
    static_shapes = True
    WARMUP_STREAM_CALLS = 3  # calls on a side stream before capture, as the CUDA-graph docs require

    def is_available(self, device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[bool, str]:
        dev = torch.device(device)
        if dev.type != "cuda":
            return False, "CUDA graphs need --device cuda"
        return _device_precision_check(dev, precision)

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu") -> Prepared:
        device = torch.device(device)
        self._require(device, precision)
        start = time.perf_counter()
        torch.backends.cudnn.benchmark = True
        model = _torch_model(model, device, precision, channels_last=True)
        prepare_input = _torch_input(device, precision, True)
        static_in = prepare_input(example).clone(memory_format=torch.channels_last)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(self.WARMUP_STREAM_CALLS):
                    model(static_in)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                static_out = model(static_in)
        except RuntimeError as exc:
            raise BackendUnavailable(f"CUDA graph capture failed: {_first_line(exc)}") from exc

        def graph_input(x: torch.Tensor) -> torch.Tensor:
            if x is static_in:
                return x
            if x.shape != static_in.shape:
                raise BackendUnavailable(f"a CUDA graph is captured for shape {tuple(static_in.shape)}, "
                                         f"got {tuple(x.shape)}; prepare one graph per batch size")
            static_in.copy_(prepare_input(x))
            return static_in

        def run(_x: torch.Tensor) -> torch.Tensor:
            graph.replay()
            return static_out

        prepared = Prepared(self.name, precision, device, run, graph_input, lambda y: y,
                            keep=[model, graph, static_in, static_out])
        _check_call(prepared, static_in)
        prepared.setup_seconds = time.perf_counter() - start
        return prepared


def _ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises for a graph or kernel it cannot run."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "NotImplemented", "RuntimeException",
             "NoSuchFile", "InvalidProtobuf", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def export_onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int = ONNX_OPSET) -> bytes:
    """Export ``model`` to ONNX in memory with a dynamic batch axis (the TorchScript-based exporter).

    The TorchScript exporter takes under a second for these CNNs and needs no onnxscript; its
    deprecation warning is silenced here. Shapes: input ``x`` ``(N, f*C, H, W)``, output ``y``.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    return buffer.getvalue()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime (CPU provider, or CUDA provider with I/O binding)"
    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32", "fp16"), "cuda": ("fp32", "fp16")}

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def is_available(self, device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[bool, str]:
        dev = torch.device(device)
        for module in ("onnxruntime", "onnx"):
            if importlib.util.find_spec(module) is None:
                return False, f"{module} is not installed (pip install 'foldedcnns[onnx]')"
        import onnxruntime as ort

        if dev.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
        if precision not in self.SUPPORTED.get(dev.type, ()):
            return False, f"ONNX Runtime has no {precision} convolution on {dev.type}"
        return _device_precision_check(dev, precision)

    def session_options(self) -> Any:
        """Intra-op threads = torch's; no spin-waiting, so PyTorch runs at full speed after an ORT call."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return options

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu", session_options: Any = None) -> Prepared:
        device = torch.device(device)
        self._require(device, precision)
        import onnxruntime as ort

        start = time.perf_counter()
        dtype = precision_dtype(precision)
        cpu_model = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
        cpu_example = example.to(device="cpu", dtype=dtype)
        try:
            onnx_bytes = export_onnx_bytes(cpu_model, cpu_example)
        except (RuntimeError, torch.onnx.OnnxExporterError) as exc:
            raise BackendUnavailable(f"ONNX export failed: {_first_line(exc)}") from exc
        options = session_options or self.session_options()
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(onnx_bytes, options, providers=providers)
        except _ort_errors() as exc:
            raise BackendUnavailable(f"ONNX Runtime rejected the model: {_first_line(exc)}") from exc
        prepared = (self._cuda_runner(session, device, dtype) if device.type == "cuda"
                    else self._cpu_runner(session, dtype))
        prepared.precision = precision
        prepared.keep.append(session)
        try:
            _check_call(prepared, example)
        except _ort_errors() as exc:
            raise BackendUnavailable(f"ONNX Runtime failed: {_first_line(exc)}") from exc
        prepared.setup_seconds = time.perf_counter() - start
        return prepared

    def _cpu_runner(self, session: Any, dtype: torch.dtype) -> Prepared:
        def prepare_input(x: torch.Tensor) -> Any:
            return x.detach().to(device="cpu", dtype=dtype).contiguous().numpy()

        def run(x: Any) -> Any:
            return session.run(None, {"x": x})[0]

        return Prepared(self.name, "", torch.device("cpu"), run, prepare_input, torch.from_numpy)

    def _cuda_runner(self, session: Any, device: torch.device, dtype: torch.dtype) -> Prepared:
        """I/O binding on torch CUDA tensors: no host copies inside the timed call."""
        import numpy as np

        np_type = np.float16 if dtype == torch.float16 else np.float32
        out_cache: dict[tuple[int, ...], torch.Tensor] = {}
        num_outputs = session.get_outputs()[0].shape[1]

        def prepare_input(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype).contiguous()

        def run(x: torch.Tensor) -> torch.Tensor:
            shape = (x.shape[0], num_outputs)
            out = out_cache.get(shape)
            if out is None:
                out = out_cache[shape] = torch.empty(shape, dtype=dtype, device=device)
            binding = session.io_binding()
            binding.bind_input("x", "cuda", device.index or 0, np_type, tuple(x.shape), x.data_ptr())
            binding.bind_output("y", "cuda", device.index or 0, np_type, shape, out.data_ptr())
            session.run_with_iobinding(binding)
            return out

        return Prepared(self.name, "", device, run, prepare_input, lambda y: y)


BACKENDS: dict[str, Backend] = {b.name: b for b in (EagerBackend(), ChannelsLastBackend(), CompileBackend(),
                                                   OnnxRuntimeBackend(), CudaGraphsBackend())}
DEFAULT_CPU_BACKENDS = ("eager", "channels-last", "onnxruntime")


def get_backend(name: str, registry: Mapping[str, Backend] | None = None) -> Backend:
    registry = BACKENDS if registry is None else registry
    if name not in registry:
        raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(registry)}")
    return registry[name]


def available_backends(device: str | torch.device = "cpu", precision: str = "fp32") -> list[str]:
    """Names of the backends that can run on ``device`` at ``precision`` here."""
    return [name for name, b in BACKENDS.items() if b.is_available(device, precision)[0]]
