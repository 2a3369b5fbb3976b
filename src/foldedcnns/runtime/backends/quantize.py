"""INT8 post-training quantization: where the calibration images come from and how they reach a backend.

``int8`` is not a cast: the PyTorch model and its input stay float32 and the engine (``openvino``
with NNCF, ``onnxruntime`` with static QDQ quantization) quantizes the exported graph, measuring the
range of every activation on *calibration* inputs. Those should be images of the task, as the model
sees them (float, normalised by :func:`foldedcnns.runtime.to_model_input`):

* :func:`load_calibration` reads a few hundred seeded images from a data set's ``train`` (else
  ``val``) split (``foldedcnns.data.folder.ImageFolder``).
* A backend takes them as ``prepare(..., calibration=...)``, or carries them:
  ``backend.calibrated(calibration)`` (and :func:`calibrated_registry` for a whole registry), which is
  how ``bench --data`` and ``tune --data`` give them to the benchmark's cache of prepared runners.
* Without calibration images the engine calibrates on seeded uniform random input, the benchmark's own
  input: the throughput is real, the accuracy means nothing (:data:`RANDOM_SOURCE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldedcnns.core.folding import fold, pad_to_multiple
from foldedcnns.data.folder import ImageFolder
from foldedcnns.errors import ConfigError, DataError, ShapeError
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.inputs import to_model_input

QUANTIZED_PRECISIONS: tuple[str, ...] = ("int8",)
CALIBRATION_SPLITS: tuple[str, ...] = ("train", "val")
DEFAULT_CALIBRATION_IMAGES = 300  # NNCF's default subset size; a few hundred images fix the ranges
RANDOM_CALIBRATION_INPUTS = 32  # folded random inputs when no images are given (throughput only)
CALIBRATION_SEED = 0
RANDOM_SOURCE = "random input (throughput only; pass --data DIR to calibrate on the task's images)"


@dataclass(frozen=True)
class Calibration:
    """Calibration images: float model input ``(N, C, H, W)`` per image (not folded) and where they came from."""

    images: torch.Tensor
    source: str

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[0] == 0 or not self.images.is_floating_point():
            raise ShapeError(f"calibration images must be a non-empty float batch (N, C, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")


def is_quantized(precision: str) -> bool:
    """Whether ``precision`` is quantized by the engine (``int8``) rather than a cast of the model."""
    return precision in QUANTIZED_PRECISIONS


def as_calibration(calibration: Calibration | torch.Tensor | None) -> Calibration | None:
    """A :class:`Calibration` from a bare float tensor of images (or ``None``)."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    return Calibration(torch.as_tensor(calibration), f"{len(calibration)} given images")


def calibration_split(data: str | Path, split: str | None = None) -> Path:
    """``data/train`` (else ``data/val``; or ``data/<split>``): the folder calibration images are read from."""
    root = Path(data)
    if not root.is_dir():
        raise DataError(f"calibration data {root} does not exist or is not a directory; "
                        "expected DIR/train/<class>/<image> (the data set a checkpoint was trained on)")
    names = (split,) if split else CALIBRATION_SPLITS
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise ConfigError(f"calibration data {root} has no {' or '.join(n + '/' for n in names)} split; "
                      "expected DIR/train/<class>/<image> (the data set a checkpoint was trained on)")


def load_calibration(data: str | Path, task: TaskSpec, *, images: int = DEFAULT_CALIBRATION_IMAGES,
                     seed: int = CALIBRATION_SEED, split: str | None = None) -> Calibration:
    """Up to ``images`` seeded images of ``task`` from ``data``'s train (else val) split, as model input.

    A missing or empty split, class folders that are not the task's, or images of another size than
    the task's input are one-line :class:`DataError`/:class:`ConfigError`. Shapes: ``(N, C, H, W)`` float.
    """
    if images < 1:
        raise ConfigError(f"calibration needs at least one image, got {images}")
    folder = calibration_split(data, split)
    dataset = ImageFolder(folder, classes=task.class_names, allow_empty=True)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images]
    picked = [dataset[int(i)][0] for i in order]
    sizes = {tuple(p.shape) for p in picked}
    want = (task.in_channels, task.height, task.width)
    if sizes != {want}:
        got = ", ".join(f"{c}x{h}x{w}" for c, h, w in sorted(sizes))
        raise DataError(f"calibration images in {folder} are {got} (CxHxW) but task {task.name} reads "
                        f"{want[0]}x{want[1]}x{want[2]}; pass the data set of this task")
    x = to_model_input(torch.stack(picked), task, layout="nchw")
    return Calibration(x, f"{len(picked)} images of {folder}")


def required_calibration(precision: str, task: TaskSpec, data: str | Path | None,
                         calibration: Calibration | None = None) -> Calibration | None:
    """The calibration images that ``precision`` needs to be deployed (``None`` unless int8): ``calibration``,
    else :func:`load_calibration` of ``data``. Predictions, exports and the Ray path never quantize on
    random input, so int8 without either is a one-line :class:`ConfigError` naming ``--data``."""
    if not is_quantized(precision):
        return None
    if calibration is not None:
        return calibration
    if data is None:
        raise ConfigError(f"{precision} must be calibrated on the task's images: pass --data DIR (the data set "
                          "with DIR/train/<class>/...)")
    return load_calibration(data, task)


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


def calibrated_registry(registry: Mapping[str, Any], calibration: Calibration | None) -> dict[str, Any]:
    """``registry`` (name -> :class:`~foldedcnns.runtime.backends.base.Backend`) with every quantizing
    backend carrying ``calibration`` (the others unchanged)."""
    return {name: backend.calibrated(calibration) for name, backend in registry.items()}


def calibration_notice(precisions: tuple[str, ...] | list[str], calibration: Calibration | None) -> str | None:
    """The one notice line for a run with int8 in ``precisions``; ``None`` without int8."""
    if not any(is_quantized(p) for p in precisions):
        return None
    return f"int8 is calibrated on {calibration.source if calibration is not None else RANDOM_SOURCE}"
