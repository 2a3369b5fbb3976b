"""Measured peak: dense matrix-multiply FLOPs/sec, the compute ceiling behind ``Utilization``.

A square ``n x n`` matmul does ``2 n^3`` FLOPs. The peak is the best rate of single calls over a
few sizes (the fastest call is the one least disturbed by other work on the machine), with the
same thread count and precision as the benchmark. It is a measured ceiling of what this machine
reaches on the best-suited dense kernel, not a data-sheet number.

Each precision's peak is the best of the dense kernels of the engines present, because the
benchmark's rows run on all of them and a ceiling below one engine's own kernel would put that
engine above 100 %:

* ``fp32``, ``bf16``, ``fp16``: ``torch.matmul``; on the CPU also OpenVINO's ``MatMul`` with constant
  weights (the CPU plugin runs it as the FullyConnected kernel, at the precision hint the ``openvino``
  backend uses) where its CPU plugin lists that precision, and ONNX Runtime's ``MatMul`` (fp32, and
  fp16 where this build has the kernel); on CUDA in fp32 also ``torch.matmul`` with TF32 when cuDNN
  may use TF32 (PyTorch's default for convolutions, not for matmul).
* ``int8`` counts integer operations (``2 n^3`` multiply-adds of int8 operands, OP/s): ``torch._int_mm``
  (int8 x int8 -> int32, where this torch has it) and OpenVINO's int8 matmul (a ``FakeQuantize``d
  activation times int8 weights, which the CPU plugin runs as a u8 x i8 FullyConnected: the kernel the
  ``openvino`` int8 backend uses).

:attr:`Peak.kernel` says which kernel won. The timed budget (``seconds`` per matrix size) is split
evenly among the kernels present, so adding engines does not lengthen the measurement beyond each
kernel's one-off setup (compiling its graph) and warm-up call.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from foldedcnns.benchmark.records import ops_unit
from foldedcnns.runtime.backends import BackendUnavailable, is_quantized, precision_dtype
from foldedcnns.runtime.backends.onnxruntime import OnnxRuntimeBackend, ort_errors
from foldedcnns.runtime.backends.openvino import CAPABILITIES, compile_openvino, cpu_capabilities
from foldedcnns.runtime.device import resolve_device
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads

CPU_SIZES: tuple[int, ...] = (1024, 2048)  # close to 4096's rate at a quarter of the cost (docs/benchmarks.md)
CUDA_SIZES: tuple[int, ...] = (4096, 8192)
DEFAULT_SECONDS = 0.5  # the peak's timed budget per matrix size, split among the kernels (each at least one call)
FLOAT_KERNEL = "torch.matmul"
TF32_KERNEL = "torch.matmul tf32"
OPENVINO_KERNEL = "openvino matmul"
ONNXRUNTIME_KERNEL = "onnxruntime matmul"
INT_MM_KERNEL = "torch._int_mm"
OPENVINO_INT8_KERNEL = "openvino int8 matmul"
ORT_TYPES = {"fp32": (1, np.float32), "fp16": (10, np.float16)}  # ONNX TensorProto element type, NumPy dtype


@dataclass(frozen=True)
class Peak:
    """Best measured dense-matmul rate on ``device`` at ``precision`` (int8: integer ops/s), and its kernel."""

    device: str
    precision: str
    flops_per_sec: float
    matrix_size: int
    calls: int
    threads: int
    kernel: str = FLOAT_KERNEL

    @property
    def unit(self) -> str:
        """``FLOP/s``, or ``int8 OP/s`` for int8."""
        return ops_unit(self.precision)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def matmul_flops(n: int) -> int:
    """FLOPs (or integer ops) of one ``(n x n) @ (n x n)`` product: ``2 n^3``."""
    return 2 * n**3


def _best_call(call: Callable[[], Any], sync: Callable[[], None], n: int, seconds: float,
               clock: Callable[[], float], limit: float) -> tuple[float, int, bool]:
    """(best rate of single calls, timed calls, too slow) of ``call`` for about ``seconds`` after one
    warm-up. A warm-up longer than ``limit`` is the only call (its rate the sample) and marks the kernel
    too slow to time at larger sizes (PyTorch's fp16 matmul on a CPU without fp16 arithmetic)."""
    start = clock()
    call()  # warm-up: library initialisation, weight packing
    sync()
    warm = clock() - start
    if warm > limit:
        return (matmul_flops(n) / warm if warm > 0 else 0.0), 1, True
    spent, best, calls = 0.0, 0.0, 0
    while spent < seconds:
        start = clock()
        call()
        sync()
        elapsed = clock() - start
        spent += elapsed
        calls += 1
        if elapsed > 0:
            best = max(best, matmul_flops(n) / elapsed)
    return best, calls, False


@contextlib.contextmanager
def _tf32_matmul() -> Iterator[None]:
    """``torch.matmul`` on TF32 tensor cores for the duration (the setting is restored after)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _torch_calls(n: int, dev: torch.device, precision: str, generator: torch.Generator,
                 ) -> dict[str, Callable[[], Any] | None]:
    dtype = precision_dtype(precision)
    a = torch.rand(n, n, generator=generator).to(device=dev, dtype=dtype)
    b = torch.rand(n, n, generator=generator).to(device=dev, dtype=dtype)
    calls: dict[str, Callable[[], Any] | None] = {FLOAT_KERNEL: lambda: torch.matmul(a, b)}
    if dev.type == "cuda" and precision == "fp32" and torch.backends.cudnn.allow_tf32:
        def tf32() -> Any:
            with _tf32_matmul():
                return torch.matmul(a, b)
        calls[TF32_KERNEL] = tf32
    return calls


def _int_mm_call(n: int, dev: torch.device, generator: torch.Generator) -> Callable[[], Any] | None:
    if not hasattr(torch, "_int_mm"):
        return None
    a = torch.randint(-128, 128, (n, n), generator=generator, dtype=torch.int8).to(dev)
    b = torch.randint(-128, 128, (n, n), generator=generator, dtype=torch.int8).to(dev)
    try:
        torch._int_mm(a, b)
    except RuntimeError:  # no int8 matmul kernel for this device or shape
        return None
    return lambda: torch._int_mm(a, b)


def _openvino_ready(dev: torch.device, precision: str) -> bool:
    if dev.type != "cpu" or importlib.util.find_spec("openvino") is None:
        return False
    try:
        return CAPABILITIES[precision] in cpu_capabilities()
    except RuntimeError:  # the CPU plugin failed to load
        return False


def _openvino_call(n: int, dev: torch.device, precision: str) -> Callable[[], Any] | None:
    """One reused InferRequest of ``x @ W^T`` with constant ``W`` (int8: ``FakeQuantize(x) @ W_int8^T``,
    a u8 x i8 FullyConnected), compiled as the ``openvino`` backend compiles at ``precision``."""
    if not _openvino_ready(dev, precision):
        return None
    import openvino as ov  # optional dependency
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], np.float32, name="x")
    if is_quantized(precision):
        low, high = ops.constant(np.float32(0.0)), ops.constant(np.float32(1.0))
        weights = ops.constant(rng.integers(-127, 128, (n, n)).astype(np.int8))
        scale = ops.constant(np.full((n, 1), 0.01, np.float32))
        y = ops.matmul(ops.fake_quantize(x, low, high, low, high, 256),
                       ops.multiply(ops.convert(weights, "f32"), scale), False, True)
    else:
        y = ops.matmul(x, ops.constant(rng.random((n, n), dtype=np.float32)), False, True)
    try:  # compiled as the openvino backend compiles (its precision hint, latency hint, threads of now)
        compiled = compile_openvino(ov.Model([y], [x]), precision, int8_hint="fp32")
    except BackendUnavailable:  # this plugin cannot compile it here
        return None
    request = compiled.create_infer_request()
    feed = {0: rng.random((n, n), dtype=np.float32)}
    return lambda: request.infer(feed, share_inputs=True, share_outputs=True)


def _onnxruntime_call(n: int, dev: torch.device, precision: str) -> Callable[[], Any] | None:
    """One ONNX Runtime session of ``x @ W`` (constant ``W``), on the CPU provider with the
    ``onnxruntime`` backend's session options; None where this build has no such MatMul kernel."""
    if dev.type != "cpu" or precision not in ORT_TYPES or any(
            importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")):
        return None
    import onnx  # optional dependency
    import onnxruntime as ort

    elem, dtype = ORT_TYPES[precision]
    rng = np.random.default_rng(0)
    weights = onnx.numpy_helper.from_array(rng.random((n, n)).astype(dtype), name="w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "peak",
        [onnx.helper.make_tensor_value_info("x", elem, [n, n])],
        [onnx.helper.make_tensor_value_info("y", elem, [n, n])], [weights])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    try:
        session = ort.InferenceSession(model.SerializeToString(), OnnxRuntimeBackend.session_options(),
                                       providers=["CPUExecutionProvider"])
        feed = {"x": rng.random((n, n)).astype(dtype)}
        session.run(None, feed)
    except ort_errors():  # no MatMul kernel of this type in this build
        return None
    return lambda: session.run(None, feed)


def kernel_calls(engine: Engine, n: int, generator: torch.Generator | None = None,
                 ) -> dict[str, Callable[[], Any] | None]:
    """Every dense kernel of ``engine``'s precision on its device, each a ready call of one ``n x n``
    product (None: that engine has none here). Call it under the thread count to time (OpenVINO and ONNX
    Runtime take PyTorch's current one)."""
    dev, precision = resolve_device(engine.device), engine.precision
    generator = generator or torch.Generator().manual_seed(0)
    if is_quantized(precision):
        return {INT_MM_KERNEL: _int_mm_call(n, dev, generator), OPENVINO_INT8_KERNEL: _openvino_call(n, dev, precision)}
    return {**_torch_calls(n, dev, precision, generator), OPENVINO_KERNEL: _openvino_call(n, dev, precision),
            ONNXRUNTIME_KERNEL: _onnxruntime_call(n, dev, precision)}


def measure_peak(engine: Engine | None = None, *, sizes: Sequence[int] | None = None,
                 seconds: float = DEFAULT_SECONDS, clock: Callable[[], float] = time.perf_counter) -> Peak:
    """Time square matmuls of each size on every kernel of the precision (module docstring), about
    ``seconds`` per size split among the kernels, and keep the fastest single call.

    ``engine`` (default ``Engine()``: fp32 on the CPU) gives the device, the precision and the thread
    count (None: PyTorch's current one); its backend does not matter: every engine's kernel is timed.
    """
    engine = Engine() if engine is None else engine
    dev = resolve_device(engine.device)
    precision = engine.precision
    precision_dtype(precision)  # an unknown precision is a ConfigError here
    sizes = tuple(sizes) if sizes else (CUDA_SIZES if dev.type == "cuda" else CPU_SIZES)
    generator = torch.Generator().manual_seed(0)
    best, best_n, total_calls, best_kernel = 0.0, sizes[0], 0, "none"

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    slow: set[str] = set()  # kernels whose one call outlasted their budget: not tried at larger sizes
    with torch_threads(engine.threads), torch.inference_mode():
        for n in sorted(sizes):
            calls = {k: c for k, c in kernel_calls(engine, n, generator).items() if c is not None}
            for kernel, call in calls.items():
                if kernel in slow:
                    continue
                rate, made, too_slow = _best_call(call, sync, n, seconds / len(calls), clock, seconds)
                total_calls += made
                if too_slow:
                    slow.add(kernel)
                if rate > best:
                    best, best_n, best_kernel = rate, n, kernel
            del calls
        threads = torch.get_num_threads()
    return Peak(str(dev), precision, best, best_n, total_calls, threads, best_kernel)
