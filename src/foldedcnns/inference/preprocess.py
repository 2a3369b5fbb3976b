"""Frame preprocessing for inference: crop, resize to the model's input, stack, normalise.

Frames travel as RGB ``uint8`` arrays of shape ``(H, W, 3)`` until the last step, which turns a
stack ``(N, H, W, 3)`` into the float tensor ``(N, C, H, W)`` the model reads (values in [0, 1],
then ``(x - mean) / std`` when the task defines a normalisation). Resizing and scaling are the data
pipeline's own (:mod:`foldedcnns.data.imageio`, :mod:`foldedcnns.data.transforms`): nearest-neighbour
resizing with OpenCV's rule, as the training frames were prepared, so a model sees at inference
exactly what it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from foldedcnns.data.imageio import resize_nearest
from foldedcnns.data.transforms import normalize, to_float
from foldedcnns.errors import ConfigError, DataError, ShapeError
from foldedcnns.models.spec import TaskSpec

RGB_CHANNELS = 3


@dataclass(frozen=True)
class Crop:
    """A rectangle of a frame in pixels: left ``x``, top ``y``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str) -> Crop:
        """Parse ``"x,y,w,h"``, e.g. ``"100,40,52,22"``."""
        parts = str(text).replace(" ", "").split(",")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4 or values[0] < 0 or values[1] < 0 or values[2] < 1 or values[3] < 1:
            raise ConfigError(f"--crop must be x,y,w,h in pixels with w, h >= 1 (e.g. 100,40,52,22), got {text!r}")
        return cls(*values)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Cut the rectangle out of ``frame`` (H, W, C); it must lie inside the frame."""
        height, width = frame.shape[:2]
        if self.x + self.w > width or self.y + self.h > height:
            raise DataError(
                f"crop {self.x},{self.y},{self.w},{self.h} does not fit in a {width}x{height} frame; "
                "pass --crop x,y,w,h inside the frame"
            )
        return frame[self.y:self.y + self.h, self.x:self.x + self.w]


def check_rgb(frame: np.ndarray, where: str) -> np.ndarray:
    """Return ``frame`` as a contiguous (H, W, 3) uint8 array or raise a DataError naming ``where``."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != RGB_CHANNELS:
        raise DataError(f"{where}: expected an RGB uint8 image (H, W, 3), got {frame.dtype} {frame.shape}")
    return np.ascontiguousarray(frame)


def prepare_frame(frame: np.ndarray, height: int, width: int, crop: Crop | None = None,
                  where: str = "frame") -> np.ndarray:
    """Crop (optional) and resize one RGB uint8 frame to the model's ``(height, width, 3)``."""
    frame = check_rgb(frame, where)
    if crop is not None:
        frame = crop.apply(frame)
    return resize_nearest(frame, (height, width))


def stack_frames(frames: Sequence[np.ndarray], height: int, width: int, crop: Crop | None = None) -> np.ndarray:
    """Prepare and stack frames of any size into one ``(N, height, width, 3)`` uint8 array."""
    out = np.empty((len(frames), height, width, RGB_CHANNELS), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = prepare_frame(np.asarray(frame), height, width, crop, where=f"image {i}")
    return out


def to_model_input(batch: np.ndarray | torch.Tensor, task: TaskSpec,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Turn a uint8 batch ``(N, H, W, 3)`` into the float model input ``(N, 3, H, W)``.

    Values are scaled to [0, 1]; a task with ``mean``/``std`` is then normalised per channel.
    """
    tensor = torch.as_tensor(batch)
    if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[-1] != RGB_CHANNELS:
        raise ShapeError(f"expected a uint8 batch (N, H, W, 3), got {tensor.dtype} {tuple(tensor.shape)}")
    if task.in_channels != RGB_CHANNELS:
        raise ConfigError(f"task {task.name} reads {task.in_channels}-channel images; inference reads RGB frames")
    x = to_float(tensor.to(device, non_blocking=True).permute(0, 3, 1, 2))
    if task.mean is not None:
        x = normalize(x, task.mean, task.std)
    return x.contiguous()
