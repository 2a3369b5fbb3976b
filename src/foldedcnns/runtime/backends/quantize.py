"""INT8 post-training quantization as the engines see it: which precisions are quantized, and the folded
calibration inputs an engine measures activation ranges on.

The images come from the data tier (:func:`foldedcnns.data.calibration.load_calibration`) and reach a
backend inside the :class:`~foldedcnns.runtime.engine.Engine` (``Engine(..., calibration=...)``).
Without calibration images the engine calibrates on seeded uniform random input, the benchmark's own
input: the throughput is real, the accuracy means nothing (:data:`RANDOM_SOURCE`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from foldedcnns.core.folding import fold, pad_to_multiple
from foldedcnns.data.calibration import CALIBRATION_SEED, Calibration
from foldedcnns.errors import ShapeError

QUANTIZED_PRECISIONS: tuple[str, ...] = ("int8",)
RANDOM_CALIBRATION_INPUTS = 32  # folded random inputs when no images are given (throughput only)
RANDOM_SOURCE = "random input (throughput only; pass --data DIR to calibrate on the task's images)"


def is_quantized(precision: str) -> bool:
    """Whether ``precision`` is quantized by the engine (``int8``) rather than a cast of the model."""
    return precision in QUANTIZED_PRECISIONS


def calibration_source(calibration: Calibration | None) -> str:
    """What an int8 engine was calibrated on: the images' source, else :data:`RANDOM_SOURCE`."""
    return calibration.source if calibration is not None else RANDOM_SOURCE


def folded_calibration(calibration: Calibration | None, example: torch.Tensor, f: int) -> np.ndarray:
    """Calibration inputs shaped like ``example`` ``(G, f*C, H, W)``: the images folded in groups of f
    (the last group padded with its own images), or seeded uniform random inputs without images.
    Returns float32 ``(n, f*C, H, W)``."""
    per_image = (example.shape[1] // f, *example.shape[2:])
    if calibration is None:
        generator = torch.Generator().manual_seed(CALIBRATION_SEED)
        return torch.rand(RANDOM_CALIBRATION_INPUTS, *example.shape[1:], generator=generator).numpy()
    x = calibration.images.detach().to(device="cpu", dtype=torch.float32)
    if tuple(x.shape[1:]) != per_image:
        raise ShapeError(f"calibration images are {tuple(x.shape[1:])} (C, H, W) but the model reads "
                         f"{per_image}; calibrate on images of the model's task")
    padded, _ = pad_to_multiple(x, f)
    return fold(padded, f).contiguous().numpy()


def calibration_notice(precisions: Sequence[str], calibration: Calibration | None) -> str | None:
    """The one notice line for a run with int8 in ``precisions``; ``None`` without int8."""
    if not any(is_quantized(p) for p in precisions):
        return None
    return f"int8 is calibrated on {calibration_source(calibration)}"
