"""Measured peak: dense matrix-multiply FLOPs/sec, the compute ceiling behind ``Utilization``.

A square ``n x n`` matmul does ``2 n^3`` FLOPs. The peak is the best rate of single calls over a
few sizes (the fastest call is the one least disturbed by other work on the machine), with the
same thread count and precision as the benchmark. It is a measured ceiling of what this machine
and this PyTorch reach on the best-suited kernel, not a data-sheet number.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from foldedcnns.runtime.backends import precision_dtype
from foldedcnns.runtime.device import resolve_device

CPU_SIZES: tuple[int, ...] = (1024, 2048)  # close to 4096's rate at a quarter of the cost (docs/benchmarks.md)
CUDA_SIZES: tuple[int, ...] = (4096, 8192)
DEFAULT_SECONDS = 0.5  # timed budget per matrix size (at least one call each)


@dataclass(frozen=True)
class Peak:
    """Best measured dense-matmul rate on ``device`` at ``precision``."""

    device: str
    precision: str
    flops_per_sec: float
    matrix_size: int
    calls: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def matmul_flops(n: int) -> int:
    """FLOPs of one ``(n x n) @ (n x n)`` product: ``2 n^3``."""
    return 2 * n**3


def measure_peak(device: str | torch.device = "cpu", precision: str = "fp32", *,
                 sizes: Sequence[int] | None = None, seconds: float = DEFAULT_SECONDS,
                 clock: Callable[[], float] = time.perf_counter) -> Peak:
    """Time square matmuls of each size for about ``seconds`` and keep the fastest single call."""
    dev = resolve_device(device)
    dtype = precision_dtype(precision)
    sizes = tuple(sizes) if sizes else (CUDA_SIZES if dev.type == "cuda" else CPU_SIZES)
    generator = torch.Generator().manual_seed(0)
    best, best_n, total_calls = 0.0, sizes[0], 0

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with torch.inference_mode():
        for n in sizes:
            a = torch.rand(n, n, generator=generator).to(device=dev, dtype=dtype)
            b = torch.rand(n, n, generator=generator).to(device=dev, dtype=dtype)
            torch.matmul(a, b)  # warm-up: library initialisation, weight packing
            sync()
            spent = 0.0
            while spent < seconds:
                start = clock()
                torch.matmul(a, b)
                sync()
                elapsed = clock() - start
                spent += elapsed
                total_calls += 1
                if elapsed > 0 and matmul_flops(n) / elapsed > best:
                    best, best_n = matmul_flops(n) / elapsed, n
            del a, b
    return Peak(str(dev), precision, best, best_n, total_calls, torch.get_num_threads())
