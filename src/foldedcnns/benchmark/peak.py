"""Measured peak: dense matrix-multiply FLOPs/sec, the compute ceiling behind ``Utilization``.

A square ``n x n`` matmul does ``2 n^3`` FLOPs. The peak is the best rate of single calls over a
few sizes (the fastest call is the one least disturbed by other work on the machine), with the
same thread count and precision as the benchmark. It is a measured ceiling of what this machine
and this PyTorch reach on the best-suited kernel, not a data-sheet number.

``int8`` counts integer operations (``2 n^3`` multiply-adds of int8 operands, OP/s): the better of
``torch._int_mm`` (int8 x int8 -> int32, where this torch has it) and OpenVINO's int8 matmul (a
``FakeQuantize``d activation times int8 weights, which the CPU plugin runs as a u8 x i8 FullyConnected:
the kernel the ``openvino`` int8 backend uses), so the Utilization of int8 rows is against what an
int8 engine reaches here. :attr:`Peak.kernel` says which one won.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from foldedcnns.benchmark.records import ops_unit
from foldedcnns.runtime.backends import is_quantized, precision_dtype
from foldedcnns.runtime.backends.openvino import ov_core
from foldedcnns.runtime.device import resolve_device
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads

CPU_SIZES: tuple[int, ...] = (1024, 2048)  # close to 4096's rate at a quarter of the cost (docs/benchmarks.md)
CUDA_SIZES: tuple[int, ...] = (4096, 8192)
DEFAULT_SECONDS = 0.5  # the peak's timed budget per matrix size (at least one call each); `peak --seconds`
FLOAT_KERNEL = "torch.matmul"
INT_MM_KERNEL = "torch._int_mm"
OPENVINO_INT8_KERNEL = "openvino int8 matmul"


@dataclass(frozen=True)
class Peak:
    """Best measured dense-matmul rate on ``device`` at ``precision`` (int8: integer ops/s)."""

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
               clock: Callable[[], float]) -> tuple[float, int]:
    """(best rate of single calls, calls made) of ``call`` after one warm-up, for about ``seconds``."""
    call()  # warm-up: library initialisation, weight packing
    sync()
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
    return best, calls


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


def _openvino_int8_call(n: int, dev: torch.device) -> Callable[[], Any] | None:
    """One reused InferRequest of ``FakeQuantize(x) @ W_int8^T`` (u8 x i8 FullyConnected on the CPU)."""
    if dev.type != "cpu" or importlib.util.find_spec("openvino") is None:
        return None
    import openvino as ov  # optional dependency
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], np.float32, name="x")
    low, high = ops.constant(np.float32(0.0)), ops.constant(np.float32(1.0))
    weights = ops.constant(rng.integers(-127, 128, (n, n)).astype(np.int8))
    scale = ops.constant(np.full((n, 1), 0.01, np.float32))
    y = ops.matmul(ops.fake_quantize(x, low, high, low, high, 256),
                   ops.multiply(ops.convert(weights, "f32"), scale), False, True)
    compiled = ov_core().compile_model(ov.Model([y], [x]), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    request = compiled.create_infer_request()
    feed = {0: rng.random((n, n), dtype=np.float32)}
    return lambda: request.infer(feed, share_inputs=True, share_outputs=True)


def measure_peak(engine: Engine | None = None, *, sizes: Sequence[int] | None = None,
                 seconds: float = DEFAULT_SECONDS, clock: Callable[[], float] = time.perf_counter) -> Peak:
    """Time square matmuls of each size for about ``seconds`` and keep the fastest single call.

    ``engine`` (default ``Engine()``: fp32 on the CPU) gives the device, the precision and the thread
    count (None: PyTorch's current one); its backend does not matter, the kernels are fixed per precision.
    """
    engine = Engine() if engine is None else engine
    dev = resolve_device(engine.device)
    precision = engine.precision
    dtype = precision_dtype(precision)
    sizes = tuple(sizes) if sizes else (CUDA_SIZES if dev.type == "cuda" else CPU_SIZES)
    generator = torch.Generator().manual_seed(0)
    best, best_n, total_calls = 0.0, sizes[0], 0
    best_kernel = "none" if is_quantized(precision) else FLOAT_KERNEL

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch_threads(engine.threads), torch.inference_mode():
        for n in sizes:
            if is_quantized(precision):
                calls = {INT_MM_KERNEL: _int_mm_call(n, dev, generator),
                         OPENVINO_INT8_KERNEL: _openvino_int8_call(n, dev)}
            else:
                a = torch.rand(n, n, generator=generator).to(device=dev, dtype=dtype)
                b = torch.rand(n, n, generator=generator).to(device=dev, dtype=dtype)
                calls = {FLOAT_KERNEL: lambda a=a, b=b: torch.matmul(a, b)}
            for kernel, call in calls.items():
                if call is None:
                    continue
                rate, made = _best_call(call, sync, n, seconds, clock)
                total_calls += made
                if rate > best:
                    best, best_n, best_kernel = rate, n, kernel
            del calls
        threads = torch.get_num_threads()
    return Peak(str(dev), precision, best, best_n, total_calls, threads, best_kernel)
