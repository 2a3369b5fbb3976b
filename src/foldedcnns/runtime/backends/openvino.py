"""``openvino``: the module converted to OpenVINO in memory and compiled for the CPU.

``ov.convert_model`` traces the float32 module once (dynamic batch axis); each prepared batch size
reshapes a copy to a static shape and compiles it with ``INFERENCE_PRECISION_HINT`` (``f32``,
``bf16``, ``f16`` where the CPU lists it in ``OPTIMIZATION_CAPABILITIES``), ``INFERENCE_NUM_THREADS``
= PyTorch's thread count at prepare time (the benchmark's ``--threads``) and the latency hint (one
stream: a call uses every thread). One ``InferRequest`` is created per runner and reused; its input
shares the NumPy buffer (no copy). ``int8`` quantizes the converted graph with NNCF
(``nncf.quantize``, its default preset) on the calibration inputs
(:mod:`foldedcnns.runtime.backends.quantize`); the layers NNCF leaves in float run in bf16 where the CPU
has it (about 15 % faster than f32 for goldnumber-fraction f=4 on an AMX Xeon), else f32. The
converted (and quantized) graph is cached per module and weights, so another batch size only reshapes
and compiles again. :func:`save_ir` / :func:`prepare_ir` write and run the IR files of
``foldedcnns export --format openvino``.

``openvino-streams`` is the same engine run the other way OpenVINO offers: the throughput hint with one
stream per thread, each call's batch split into equal parts that run concurrently on their own
``InferRequest`` (``start_async`` / ``wait``). A stream's layers then run on one thread with no
synchronisation between threads; on the 2-core development machine that was no faster than the latency
hint (docs/engines.md), so it is chosen by name, not searched by default.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import io
import json
import logging
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from foldedcnns.errors import ConfigError, DataError, first_line
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime.backends.base import (
    Backend,
    BackendUnavailable,
    Prepared,
    check_call,
    device_precision_check,
    model_fold,
)
from foldedcnns.runtime.backends.quantize import (
    RANDOM_SOURCE,
    Calibration,
    as_calibration,
    folded_calibration,
    is_quantized,
)

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


def convert_openvino(model: nn.Module, example: torch.Tensor, batch: int = -1) -> Any:
    """``ov.convert_model`` of a float32 copy of ``model`` traced on ``example`` ``(G, f*C, H, W)``;
    input shape ``(batch, f*C, H, W)``, ``batch`` -1: dynamic."""
    import openvino as ov  # optional dependency

    cpu_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    x = example[:1].detach().to(device="cpu", dtype=torch.float32)
    try:
        with torch.no_grad(), warnings.catch_warnings():
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
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            return nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples))
    except Exception as exc:  # NNCF and OpenVINO raise their own types
        raise BackendUnavailable(f"NNCF int8 quantization failed: {first_line(exc)}") from exc


def weights_key(model: nn.Module) -> tuple[Any, ...]:
    """Changes when the module's parameters or buffers are replaced or modified in place."""
    return tuple((name, t.data_ptr(), t._version, tuple(t.shape)) for name, t in model.state_dict().items())


class OpenVinoBackend(Backend):
    name = "openvino"
    description = "OpenVINO on the CPU (in-memory conversion, static shapes; int8 by NNCF)"
    static_shapes = True
    PERFORMANCE_HINT: ClassVar[str] = "LATENCY"

    def __init__(self, threads: int | None = None, calibration: Calibration | None = None,
                 int8_hint: str | None = None) -> None:
        self.threads = threads
        self.calibration = calibration
        self.int8_hint = int8_hint  # precision of the layers NNCF leaves in float; None: bf16 where the CPU has it
        # module -> {(fold, per-input shape, int8?, calibration id): (weights key, calibration, ov.Model)}
        self._graphs: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], tuple[Any, ...]]] = (
            weakref.WeakKeyDictionary())

    def calibrated(self, calibration: Calibration | None) -> OpenVinoBackend:
        twin = copy.copy(self)
        twin.calibration = calibration
        twin._graphs = weakref.WeakKeyDictionary()
        return twin

    def is_available(self, device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[bool, str]:
        dev = torch.device(device)
        if importlib.util.find_spec("openvino") is None:
            return False, f"openvino is not installed ({INSTALL})"
        if dev.type != "cpu":
            return False, "the openvino backend runs on the CPU; use --device cpu"
        if is_quantized(precision) and importlib.util.find_spec("nncf") is None:
            return False, f"int8 needs nncf, which is not installed ({INSTALL})"
        ok, reason = device_precision_check(dev, precision, quantizes=True)
        if not ok:
            return ok, reason
        try:
            capabilities = cpu_capabilities()
        except RuntimeError as exc:
            return False, f"OpenVINO's CPU plugin failed: {first_line(exc)}"
        if CAPABILITIES[precision] not in capabilities:
            return False, f"this CPU has no {precision} in OpenVINO ({', '.join(capabilities)})"
        return True, ""

    def parts(self, inputs: int) -> int:
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

    def compile(self, ov_model: Any, precision: str, extra: dict[str, Any] | None = None) -> Any:
        """Compile for the CPU at ``precision``'s hint with the thread count of now (or ``threads``);
        ``extra``: more properties (the profiler's ``PERF_COUNT``)."""
        if is_quantized(precision):
            precision = self.int8_hint or ("bf16" if "BF16" in cpu_capabilities() else "fp32")
        hint = HINTS[precision]
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": self.PERFORMANCE_HINT,
                  "INFERENCE_NUM_THREADS": int(self.threads or torch.get_num_threads()), **(extra or {})}
        try:
            return ov_core().compile_model(ov_model, "CPU", config)
        except RuntimeError as exc:
            raise BackendUnavailable(f"OpenVINO could not compile the model: {first_line(exc)}") from exc

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu", fold: int | None = None,
                calibration: Calibration | torch.Tensor | None = None) -> Prepared:
        """``calibration`` (int8): images to measure activation ranges on, default the backend's own
        (:meth:`calibrated`), else random input (throughput only)."""
        device = torch.device(device)
        self._require(device, precision)
        start = time.perf_counter()
        f = model_fold(model) if fold is None else fold
        calib = as_calibration(calibration) if calibration is not None else self.calibration
        parts = self.parts(int(example.shape[0]))
        static = self.graph(model, example, precision, f, calib).clone()
        static.reshape([int(example.shape[0]) // parts, *example.shape[1:]])
        compiled = self.compile(static, precision, {"NUM_STREAMS": parts} if parts > 1 else None)
        prepared = runner(self.name, precision, compiled, parts)
        if is_quantized(precision):
            prepared.calibration = calib.source if calib is not None else RANDOM_SOURCE
        return self._finish(prepared, model, example, fold, start)


class OpenVinoStreamsBackend(OpenVinoBackend):
    name = "openvino-streams"
    description = "OpenVINO, each call split over one stream per thread (throughput hint, concurrent requests)"
    PERFORMANCE_HINT: ClassVar[str] = "THROUGHPUT"

    def parts(self, inputs: int) -> int:
        """One part per thread, fewer where the call's folded inputs do not split evenly."""
        return streams_for(inputs, int(self.threads or torch.get_num_threads()))


def streams_for(inputs: int, threads: int) -> int:
    """The most streams, at most ``threads``, that split ``inputs`` folded inputs into equal parts."""
    return max(s for s in range(1, max(1, min(threads, inputs)) + 1) if inputs % s == 0)


def runner(name: str, precision: str, compiled: Any, parts: int = 1) -> Prepared:
    """A :class:`Prepared` around reused ``InferRequest`` s of ``compiled`` (input shared, not copied):
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

    return Prepared(name, precision, torch.device("cpu"), run, prepare_input, to_tensor,
                    keep=[compiled, *requests])


# -- OpenVINO IR files (.xml + .bin): written by `foldedcnns export --format openvino` ------------------

IR_SUFFIX = ".xml"
RT_CONFIG = ["foldedcnns", "model_config"]  # rt_info path of the ModelConfig JSON
RT_PRECISION = ["foldedcnns", "precision"]


def is_ir_path(path: Any) -> bool:
    """Whether ``path`` names an OpenVINO IR (``.xml``) rather than a checkpoint."""
    return isinstance(path, (str, Path)) and Path(path).suffix == IR_SUFFIX


def write_ir(ov_model: Any, xml: str | Path, config: ModelConfig, precision: str) -> Path:
    """Write ``ov_model`` with its config and precision in ``rt_info`` to ``xml`` and the ``.bin`` beside it
    (not atomically: see :func:`foldedcnns.inference.export_openvino.export_openvino`). fp16 stores the
    weights in fp16; the others keep them as they are."""
    import openvino as ov  # optional dependency

    xml = Path(xml)
    if xml.suffix != IR_SUFFIX:
        raise ConfigError(f"an OpenVINO IR is an .xml file (its weights go to the .bin beside it), got {xml}")
    ov_model.set_rt_info(json.dumps(config.to_dict()), RT_CONFIG)
    ov_model.set_rt_info(precision, RT_PRECISION)
    ov.save_model(ov_model, str(xml), compress_to_fp16=precision == "fp16")
    return xml


def read_ir(xml: str | Path) -> tuple[Any, ModelConfig, str]:
    """(``ov.Model``, its :class:`ModelConfig`, its precision) of an IR written by :func:`save_ir`."""
    xml = Path(xml)
    if not xml.is_file() or not xml.with_suffix(".bin").is_file():
        raise DataError(f"OpenVINO IR {xml} (with {xml.with_suffix('.bin').name} beside it) does not exist; "
                        "write one with 'foldedcnns export CKPT --format openvino --out FILE.xml'")
    try:
        ov_model = ov_core().read_model(str(xml))
    except RuntimeError as exc:
        raise DataError(f"cannot read OpenVINO IR {xml}: {first_line(exc)}") from exc
    if not ov_model.has_rt_info(RT_CONFIG):
        raise ConfigError(f"{xml} has no foldedcnns metadata; export it with 'foldedcnns export --format openvino'")
    config = ModelConfig.from_dict(json.loads(ov_model.get_rt_info(RT_CONFIG).astype(str)))
    precision = ov_model.get_rt_info(RT_PRECISION).astype(str) if ov_model.has_rt_info(RT_PRECISION) else "fp32"
    return ov_model, config, precision


def prepare_ir(xml: str | Path, *, folded_inputs: int, threads: int | None = None) -> tuple[Prepared, ModelConfig]:
    """A static-shape :class:`Prepared` runner of an exported IR for calls of ``folded_inputs`` inputs."""
    backend = OpenVinoBackend(threads=threads)
    ov_model, config, precision = read_ir(xml)
    ok, reason = backend.is_available("cpu", precision)
    if not ok:
        raise ConfigError(f"cannot run {xml} ({precision}) here: {reason}")
    start = time.perf_counter()
    ov_model.reshape([folded_inputs, *config.input_shape])
    prepared = runner(backend.name, precision, backend.compile(ov_model, precision))
    example = torch.rand(folded_inputs, *config.input_shape, generator=torch.Generator().manual_seed(0))
    prepared.fold, prepared.static_inputs = config.fold, folded_inputs
    check_call(prepared, example)
    prepared.setup_seconds = time.perf_counter() - start
    return prepared, config
