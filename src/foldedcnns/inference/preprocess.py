"""Frame preprocessing for inference: crop, resize to the model's input, stack, normalise.

Frames travel as RGB ``uint8`` arrays of shape ``(H, W, 3)`` until the model's input:
:func:`foldedcnns.data.model_input.to_model_input` turns a stack ``(N, H, W, 3)`` into the float
tensor ``(N, C, H, W)`` the model reads. Resizing and scaling are the data
pipeline's own (:mod:`foldedcnns.data.imageio`, :mod:`foldedcnns.data.transforms`): nearest-neighbour
resizing with OpenCV's rule, as the training frames were prepared, so a model sees at inference
exactly what it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from foldedcnns.data.crop import Crop
from foldedcnns.data.imageio import resize_nearest
from foldedcnns.data.model_input import RGB_CHANNELS
from foldedcnns.errors import DataError


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
        frame = crop.apply(frame, where)
    return resize_nearest(frame, (height, width))


def stack_frames(frames: Sequence[np.ndarray], height: int, width: int, crop: Crop | None = None) -> np.ndarray:
    """Prepare and stack frames of any size into one ``(N, height, width, 3)`` uint8 array (a new array: a
    stack already at that size, uncropped, is copied whole, not frame by frame)."""
    if (crop is None and isinstance(frames, np.ndarray) and frames.dtype == np.uint8
            and frames.shape == (len(frames), height, width, RGB_CHANNELS)):
        return frames.copy()
    out = np.empty((len(frames), height, width, RGB_CHANNELS), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = prepare_frame(np.asarray(frame), height, width, crop, where=f"image {i}")
    return out
