"""INT8 calibration images: which images of a task an engine measures its activation ranges on.

``int8`` is not a cast: the engine (``openvino`` with NNCF, ``onnxruntime`` with static QDQ) quantizes
the exported graph, measuring the range of every activation on *calibration* inputs. Those should be
images of the task as the model sees them (float, normalised by :func:`to_model_input`).
:func:`load_calibration` reads a few hundred seeded images from a data set's ``train`` (else ``val``)
split; the runtime only consumes the resulting :class:`Calibration` (``Engine(calibration=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from foldedcnns.data.folder import ImageFolder
from foldedcnns.data.model_input import to_model_input
from foldedcnns.errors import ConfigError, DataError, ShapeError
from foldedcnns.models.spec import TaskSpec

CALIBRATION_SPLITS: tuple[str, ...] = ("train", "val")
DEFAULT_CALIBRATION_IMAGES = 300  # NNCF's default subset size; a few hundred images fix the ranges
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class Calibration:
    """Calibration images: float model input ``(N, C, H, W)`` per image (not folded) and where they came from."""

    images: torch.Tensor
    source: str

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[0] == 0 or not self.images.is_floating_point():
            raise ShapeError(f"calibration images must be a non-empty float batch (N, C, H, W), got "
                             f"{self.images.dtype} {tuple(self.images.shape)}")

    @classmethod
    def of(cls, images: torch.Tensor | Calibration) -> Calibration:
        """A :class:`Calibration` of a bare float tensor of images ``(N, C, H, W)`` (a Calibration as it is)."""
        if isinstance(images, Calibration):
            return images
        return cls(torch.as_tensor(images), f"{len(images)} given images")


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
