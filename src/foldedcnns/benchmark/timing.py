"""The timing loop of the original's protocol: a fixed input, warm-up, synchronize, time, synchronize.

Throughput counts images: a folded model at a nominal batch of ``B`` images runs
``ceil(B / f)`` folded inputs per call, that is ``ceil(B / f) * f`` images (``B`` rounded up to a
multiple of ``f``: 1026 images for f = 3 at B = 1024, where the original ran 1023). The true number
of images per call is what the throughput divides by, and it is reported next to ``B``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foldedcnns.core.folding import round_batch
from foldedcnns.errors import ConfigError


def images_per_call(batch_size: int, fold: int) -> int:
    """Images one call really classifies: ``ceil(B / f) * f`` (B rounded up to a multiple of f)."""
    return round_batch(batch_size, fold, "up")


def folded_inputs(batch_size: int, fold: int) -> int:
    """Folded inputs per call for ``batch_size`` images at fold ``fold``: ``ceil(B / f)``."""
    return images_per_call(batch_size, fold) // fold


@dataclass(frozen=True)
class Timing:
    """``calls`` timed calls of ``images`` images each took ``seconds`` (after warm-up, synchronized)."""

    calls: int
    seconds: float
    images: int

    @property
    def throughput(self) -> float:
        """Images per second."""
        return self.calls * self.images / self.seconds if self.seconds > 0 else math.inf


def check_budget(iterations: int | None, seconds: float | None, warmup: int) -> None:
    if (iterations is None) == (seconds is None):
        raise ConfigError("give exactly one of iterations or seconds for the timed phase")
    if iterations is not None and iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    if seconds is not None and not 0 < seconds < math.inf:  # also NaN
        raise ConfigError(f"--seconds must be a finite number > 0, got {seconds}")
    if warmup < 0:
        raise ConfigError(f"warm-up must be >= 0 calls, got {warmup}")


def time_calls(run: Callable[[Any], Any], x: Any, images: int, *, warmup: int, iterations: int | None = None,
               seconds: float | None = None, synchronize: Callable[[], None] = lambda: None,
               clock: Callable[[], float] | None = None) -> Timing:
    """Time ``run(x)`` on the same input ``x``.

    ``warmup`` untimed calls, then either exactly ``iterations`` calls or as many calls as fit in
    ``seconds`` (at least one; the clock is read after each call, the device is synchronized only
    at both ends, as in the original). ``images`` is the number of images one call classifies.
    ``clock`` defaults to :func:`time.perf_counter`.
    """
    check_budget(iterations, seconds, warmup)
    clock = clock or time.perf_counter
    for _ in range(warmup):
        run(x)
    synchronize()
    start = clock()
    calls = 0
    if iterations is not None:
        for _ in range(iterations):
            run(x)
        calls = iterations
    else:
        assert seconds is not None
        while True:
            run(x)
            calls += 1
            if clock() - start >= seconds:
                break
    synchronize()
    return Timing(calls, clock() - start, images)
