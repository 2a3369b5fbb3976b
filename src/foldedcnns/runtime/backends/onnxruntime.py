"""``onnxruntime``: the module exported to ONNX in memory and run by ONNX Runtime.

The CPU provider takes NumPy inputs; the CUDA provider runs with I/O binding on torch CUDA tensors,
so the timed call makes no host copies. ``int8`` (CPU) is static post-training quantization of the
float32 graph (``onnxruntime.quantization.quantize_static``, QDQ format, per-channel int8 weights,
uint8 activations, min-max ranges of the calibration inputs: :mod:`foldedcnns.runtime.backends.quantize`).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from foldedcnns.errors import first_line
from foldedcnns.runtime.backends.base import Backend, BackendUnavailable, Runner, precision_dtype
from foldedcnns.runtime.backends.quantize import folded_calibration, is_quantized

if TYPE_CHECKING:
    from foldedcnns.runtime.engine import Engine

ONNX_OPSET = 17
CALIBRATION_BATCH = 32  # folded inputs per calibration call


def ort_errors() -> tuple[type[BaseException], ...]:
    """The exception types ONNX Runtime raises for a graph or kernel it cannot run."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state  # optional dependency

    names = ("Fail", "InvalidArgument", "InvalidGraph", "NotImplemented", "RuntimeException",
             "NoSuchFile", "InvalidProtobuf", "EPFail")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


def export_onnx_bytes(model: nn.Module, example: torch.Tensor, opset: int = ONNX_OPSET) -> bytes:
    """Export ``model`` to ONNX in memory with a dynamic batch axis (the TorchScript-based exporter).

    The TorchScript exporter is fast for these CNNs and needs no onnxscript; its deprecation warning
    is silenced here. Shapes: input ``x`` ``(N, f*C, H, W)``, output ``y``.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    return buffer.getvalue()


def quantize_onnx_int8(onnx_bytes: bytes, inputs: np.ndarray) -> bytes:
    """Static QDQ INT8 quantization of a float32 graph, its activation ranges measured on ``inputs``
    (float32 ``(n, f*C, H, W)``, the graph's input ``x``): per-channel int8 weights, uint8 activations
    (ONNX Runtime's U8S8 kernels on x86), after ONNX Runtime's recommended pre-processing (shape
    inference, constant folding)."""
    import onnx  # optional dependency
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.chunks = iter([{"x": inputs[i:i + CALIBRATION_BATCH]} for i in range(0, len(inputs),
                                                                                      CALIBRATION_BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.chunks, None)

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory(prefix="foldedcnns-int8-") as tmp:
        try:
            root.setLevel(logging.ERROR)  # the quantizer's advice goes to the root logger
            pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
            quant_pre_process(onnx.load_from_string(onnx_bytes), pre)
            quantize_static(str(pre), out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return out.read_bytes()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime (CPU provider, or CUDA provider with I/O binding)"
    quantizes = True
    torch_runs_model = False
    SUPPORTED: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("fp32", "fp16", "int8"), "cuda": ("fp32", "fp16")}

    def available(self, device: torch.device, precision: str) -> tuple[bool, str]:
        for module in ("onnxruntime", "onnx"):
            if importlib.util.find_spec(module) is None:
                return False, f"{module} is not installed (pip install 'foldedcnns[onnx]')"
        import onnxruntime as ort  # optional dependency, present (checked above)

        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return False, "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
        if precision not in self.SUPPORTED.get(device.type, ()):
            return False, f"ONNX Runtime has no {precision} convolution on {device.type}"
        return True, ""

    @staticmethod
    def session_options(threads: int | None = None) -> Any:
        """Intra-op threads = ``threads`` else torch's; no spin-waiting, so PyTorch runs at full speed
        after an ORT call."""
        import onnxruntime as ort  # optional dependency

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return options

    def build(self, model: nn.Module, example: torch.Tensor, engine: Engine, fold: int) -> Runner:
        """int8: activation ranges measured on ``engine.calibration``, else random input (throughput only)."""
        import onnxruntime as ort  # optional dependency

        device, precision = torch.device(engine.device), engine.precision
        dtype = precision_dtype(precision)
        cpu_model = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
        cpu_example = example.to(device="cpu", dtype=dtype)
        try:
            onnx_bytes = export_onnx_bytes(cpu_model, cpu_example)
        except (RuntimeError, torch.onnx.OnnxExporterError) as exc:
            raise BackendUnavailable(f"ONNX export failed: {first_line(exc)}") from exc
        if is_quantized(precision):
            try:
                onnx_bytes = quantize_onnx_int8(onnx_bytes, folded_calibration(engine.calibration, cpu_example, fold))
            except ort_errors() as exc:
                raise BackendUnavailable(f"ONNX Runtime int8 quantization failed: {first_line(exc)}") from exc
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(onnx_bytes, self.session_options(engine.threads), providers=providers)
        except ort_errors() as exc:
            raise BackendUnavailable(f"ONNX Runtime rejected the model: {first_line(exc)}") from exc
        runner = cuda_runner(session, device, dtype) if device.type == "cuda" else cpu_runner(session, dtype)
        return runner._replace(keep=(session,))

    def call_errors(self) -> tuple[type[BaseException], ...]:
        return (RuntimeError, *ort_errors())



def cpu_runner(session: Any, dtype: torch.dtype) -> Runner:
    def prepare_input(x: torch.Tensor) -> Any:
        return x.detach().to(device="cpu", dtype=dtype).contiguous().numpy()

    def run(x: Any) -> Any:
        return session.run(None, {"x": x})[0]

    numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype

    def numpy_input(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, numpy_dtype)

    return Runner(run, prepare_input, torch.from_numpy, numpy_input=numpy_input)


def cuda_runner(session: Any, device: torch.device, dtype: torch.dtype) -> Runner:
    """I/O binding on torch CUDA tensors: no host copies inside the timed call."""
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

    return Runner(run, prepare_input, lambda y: y.clone())
