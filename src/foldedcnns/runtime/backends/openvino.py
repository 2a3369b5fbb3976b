"""``openvino``: the module converted to OpenVINO in memory and compiled for the CPU.

``ov.convert_model`` traces the float32 module once (dynamic batch axis); each prepared batch size
reshapes a copy to a static shape and compiles it with ``INFERENCE_PRECISION_HINT`` (``f32``,
``bf16``, ``f16`` where the CPU lists it in ``OPTIMIZATION_CAPABILITIES``), ``INFERENCE_NUM_THREADS``
= PyTorch's thread count at prepare time (the benchmark's ``--threads``) and the latency hint (one
stream: a call uses every thread). One ``InferRequest`` is created per runner and reused; its input
shares the NumPy buffer (no copy). ``int8`` quantizes the converted graph with NNCF
(``nncf.quantize``, its default preset) on the calibration inputs
(:mod:`foldedcnns.runtime.backends.quantize`); the layers NNCF leaves in float run in bf16 where the CPU
has it, else f32 (docs/engines.md has the measured effect). The converted (and quantized) graph is cached
per module, weights and calibration, so another batch size only reshapes and compiles again. The IR
files of ``foldedcnns export --format openvino`` are written and run by
:mod:`foldedcnns.inference.openvino_ir` with :func:`compile_openvino` and :func:`openvino_runner`.

``openvino-streams`` is the same engine run the other way OpenVINO offers: the throughput hint with one
stream per thread, each call's batch split into equal parts that run concurrently on their own
``InferRequest`` (``start_async`` / ``wait``). A stream's layers then run on one thread with no
synchronisation between threads. It is chosen by name, not searched by default: docs/engines.md has the
side-by-side measurement that decided it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from foldedcnns.data.calibration import Calibration
from foldedcnns.errors import first_line
from foldedcnns.runtime.backends.base import Backend, BackendUnavailable, Runner
from foldedcnns.runtime.backends.quantize import folded_calibration, is_quantized

if TYPE_CHECKING:
    from foldedcnns.runtime.engine import Engine

# OpenVINO's element type for INFERENCE_PRECISION_HINT, and the CPU capability each needs.
HINTS: dict[str, str] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CAPABILITIES: dict[str, str] = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}
INSTALL = "pip install 'foldedcnns[openvino]'"


@functools.lru_cache(maxsize=1)
def ov_core() -> Any:
    """The process's one ``openvino.Core``."""
    import openvino as ov  # optional dependency

    return ov.Core()


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` (``FP32``, ``BF16``, ``FP16``, ``INT8``, ...)."""
    return tuple(ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


_TELEMETRY_LOCK = threading.RLock()


@contextlib.contextmanager
def _stubbed(attribute: str, module_names: tuple[str, ...], make_stub: Callable[[], Any]) -> Iterator[None]:
    """Within: ``attribute`` of each module is ``make_stub()``; restored after. A layout where one of them is
    missing runs as it is."""
    try:
        stub = make_stub()
        modules = [importlib.import_module(name) for name in module_names]
    except (ImportError, AttributeError):
        stub, modules = None, []  # nothing to swap; yielding here would chain the body's errors to this one
    with _TELEMETRY_LOCK:
        saved = [getattr(module, attribute, None) for module in modules]
        for module in modules:
            setattr(module, attribute, stub)
        try:
            yield
        finally:
            for module, value in zip(modules, saved, strict=True):
                setattr(module, attribute, value)


def converter_telemetry_off() -> contextlib.AbstractContextManager[None]:
    """Within: OpenVINO's converter reports nothing. Unless a user has opted out, ``ov.convert_model`` sends
    each conversion to Google Analytics through ``openvino-telemetry`` (16 events for one model), each from a
    process forked off this one; a fork of a threaded process (a server, Ray, a decode pool) can hang in it and
    outlive its parent, and an offline machine gets nothing from it. A library that converts as a step of its
    own work stays quiet: the converter runs with OpenVINO's own stub, as when ``openvino-telemetry`` is not
    installed. Restored after, so the user's own conversions keep their settings."""
    return _stubbed("tm", ("openvino.tools.ovc.convert_impl", "openvino.tools.ovc.telemetry_utils"),
                    lambda: importlib.import_module("openvino.tools.ovc.telemetry_stub"))


def nncf_telemetry_off() -> contextlib.AbstractContextManager[None]:
    """Within: NNCF reports nothing (its own stub, as NNCF runs under its CI or pytest), for the same reasons as
    :func:`converter_telemetry_off`: ``nncf.quantize`` reports through ``openvino-telemetry`` too."""
    return _stubbed("telemetry", ("nncf.telemetry.decorator",),
                    lambda: importlib.import_module("nncf.telemetry.wrapper").NNCFTelemetryStub())


def convert_openvino(model: nn.Module, example: torch.Tensor, batch: int = -1) -> Any:
    """``ov.convert_model`` of a float32 copy of ``model`` traced on ``example`` ``(G, f*C, H, W)``;
    input shape ``(batch, f*C, H, W)``, ``batch`` -1: dynamic."""
    import openvino as ov  # optional dependency

    cpu_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    x = example[:1].detach().to(device="cpu", dtype=torch.float32)
    try:
        with torch.no_grad(), warnings.catch_warnings(), converter_telemetry_off():
            warnings.simplefilter("ignore")  # the converter traces with torch.jit.trace, deprecated in torch
            return ov.convert_model(cpu_model, example_input=x, input=[ov.PartialShape([batch, *x.shape[1:]])])
    except Exception as exc:  # the converter raises its own types (OpConversionFailure, ...)
        raise BackendUnavailable(f"OpenVINO conversion failed: {first_line(exc)}") from exc


def quantize_openvino(ov_model: Any, inputs: np.ndarray) -> Any:
    """NNCF post-training INT8 quantization of ``ov_model`` with activation ranges measured on
    ``inputs`` (float32 ``(n, f*C, H, W)``, one folded input per calibration sample)."""
    import nncf  # optional dependency

    samples = [inputs[i:i + 1] for i in range(len(inputs))]
    nncf.set_log_level(logging.ERROR)
    quiet = io.StringIO()  # NNCF draws progress bars on stdout, which would spoil --json output
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), nncf_telemetry_off():
            return nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples))
    except Exception as exc:  # NNCF and OpenVINO raise their own types
        raise BackendUnavailable(f"NNCF int8 quantization failed: {first_line(exc)}") from exc


def weights_key(model: nn.Module) -> tuple[Any, ...]:
    """Changes when the module's parameters or buffers are replaced or modified in place."""
    return tuple((name, t.data_ptr(), t._version, tuple(t.shape)) for name, t in model.state_dict().items())


def compile_openvino(ov_model: Any, precision: str, *, threads: int | None = None, hint: str = "LATENCY",
                     int8_hint: str | None = None, extra: dict[str, Any] | None = None) -> Any:
    """Compile ``ov_model`` for the CPU at ``precision``'s hint with ``threads`` (None: PyTorch's count now).

    int8: the layers NNCF leaves in float run at ``int8_hint`` (None: bf16 where the CPU has it, else fp32).
    ``extra``: more properties (``NUM_STREAMS``, the profiler's ``PERF_COUNT``).

    Threads are not pinned to cores (``ENABLE_CPU_PINNING`` off): pinned, a call sets the CPU affinity of its
    threads and takes it back (two ``sched_setaffinity`` per call), and a thread pinned to a core that the
    event loop or a decoder holds waits for that core. Unpinned, the server answers 3 % (one image, c=1 and
    c=8) to 12 % (c=64) more requests per second, and the offline rate is the same (docs/serving.md).
    """
    if is_quantized(precision):
        precision = int8_hint or ("bf16" if "BF16" in cpu_capabilities() else "fp32")
    config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": hint,
              "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
              "ENABLE_CPU_PINNING": False, **(extra or {})}
    try:
        return ov_core().compile_model(ov_model, "CPU", config)
    except RuntimeError as exc:
        raise BackendUnavailable(f"OpenVINO could not compile the model: {first_line(exc)}") from exc


class OpenVinoBackend(Backend):
    name = "openvino"
    description = "OpenVINO on the CPU (in-memory conversion, static shapes; int8 by NNCF)"
    static_shapes = True
    quantizes = True
    torch_runs_model = False
    devices = ("cpu",)
    PERFORMANCE_HINT: ClassVar[str] = "LATENCY"

    def __init__(self) -> None:
        # module -> {(fold, per-input shape, int8?, calibration id): (weights key, calibration, ov.Model)}
        self._graphs: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], tuple[Any, ...]]] = (
            weakref.WeakKeyDictionary())

    def available(self, device: torch.device, precision: str) -> tuple[bool, str]:
        if importlib.util.find_spec("openvino") is None:
            return False, f"openvino is not installed ({INSTALL})"
        if is_quantized(precision) and importlib.util.find_spec("nncf") is None:
            return False, f"int8 needs nncf, which is not installed ({INSTALL})"
        try:
            capabilities = cpu_capabilities()
        except RuntimeError as exc:
            return False, f"OpenVINO's CPU plugin failed: {first_line(exc)}"
        if CAPABILITIES[precision] not in capabilities:
            return False, f"this CPU has no {precision} in OpenVINO ({', '.join(capabilities)})"
        return True, ""

    def parts(self, inputs: int, threads: int | None) -> int:
        """Into how many concurrent requests one call of ``inputs`` folded inputs is split: 1 here."""
        return 1

    def graph(self, model: nn.Module, example: torch.Tensor, precision: str, fold: int,
              calibration: Calibration | None) -> Any:
        """The converted (int8: quantized) dynamic-batch graph of ``model``, cached per module and weights."""
        quantized = is_quantized(precision)
        key = (fold, tuple(example.shape[1:]), quantized, id(calibration) if quantized else None)
        graphs = self._graphs.setdefault(model, {})
        weights = weights_key(model)
        hit = graphs.get(key)
        if hit is not None and hit[0] == weights and hit[1] is calibration:
            return hit[2]
        ov_model = convert_openvino(model, example)
        if quantized:
            ov_model = quantize_openvino(ov_model, folded_calibration(calibration, example, fold))
        graphs[key] = (weights, calibration, ov_model)
        return ov_model

    def build(self, model: nn.Module, example: torch.Tensor, engine: Engine, fold: int) -> Runner:
        """int8: activation ranges measured on ``engine.calibration``, else random input (throughput only)."""
        parts = self.parts(int(example.shape[0]), engine.threads)
        static = self.graph(model, example, engine.precision, fold, engine.calibration).clone()
        static.reshape([int(example.shape[0]) // parts, *example.shape[1:]])
        compiled = compile_openvino(static, engine.precision, threads=engine.threads, hint=self.PERFORMANCE_HINT,
                                    extra={"NUM_STREAMS": parts} if parts > 1 else None)
        return openvino_runner(compiled, parts)


class OpenVinoStreamsBackend(OpenVinoBackend):
    name = "openvino-streams"
    description = "OpenVINO, each call split over one stream per thread (throughput hint, concurrent requests)"
    PERFORMANCE_HINT: ClassVar[str] = "THROUGHPUT"

    def parts(self, inputs: int, threads: int | None) -> int:
        """One part per thread, fewer where the call's folded inputs do not split evenly."""
        return streams_for(inputs, int(threads or torch.get_num_threads()))


def streams_for(inputs: int, threads: int) -> int:
    """The most streams, at most ``threads``, that split ``inputs`` folded inputs into equal parts."""
    return max(s for s in range(1, max(1, min(threads, inputs)) + 1) if inputs % s == 0)


def openvino_runner(compiled: Any, parts: int = 1) -> Runner:
    """A :class:`Runner` around reused ``InferRequest`` s of ``compiled`` (input shared, not copied):
    one, called synchronously, or ``parts``, each given an equal slice of the call's batch and run
    concurrently (``compiled`` then has a static batch of one part)."""
    requests = [compiled.create_infer_request() for _ in range(parts)]

    def prepare_input(x: torch.Tensor) -> np.ndarray:
        return x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()

    def run(x: np.ndarray) -> np.ndarray:
        if parts == 1:
            return requests[0].infer({0: x}, share_inputs=True, share_outputs=True)[0]
        for request, part in zip(requests, np.split(x, parts), strict=True):
            request.start_async({0: part}, share_inputs=True)
        for request in requests:
            request.wait()
        return np.concatenate([request.get_output_tensor(0).data for request in requests])

    def to_tensor(y: np.ndarray) -> torch.Tensor:
        # one request: a copy, since the shared output buffer is overwritten by the next call;
        # several: np.concatenate has already copied
        return torch.tensor(y) if parts == 1 else torch.from_numpy(y)

    return Runner(run, prepare_input, to_tensor, keep=(compiled, *requests), numpy_input=_float32)


def _float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32)
