"""Train, validation and test images of a task as in-memory uint8 tensors.

``--data`` is either an image folder with ``train/``, ``val/`` and ``test/`` subfolders of class
folders, or (for cifar10 / cifar100) a CIFAR archive or its extracted folder. Labels follow the task
description's class order. When there is no validation split (CIFAR, or a folder without ``val/``),
one is drawn from the training images with a fixed seed (19, the original's), so training and
``evaluate`` always see the same split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from foldedcnns.data.cifar import load_cifar
from foldedcnns.data.folder import ImageFolder
from foldedcnns.data.transforms import resize
from foldedcnns.errors import DataError
from foldedcnns.models.spec import TaskSpec

SPLITS = ("train", "val", "test")
VAL_SPLIT_SEED = 19
CIFAR_TASKS = ("cifar10", "cifar100")


@dataclass(frozen=True)
class SplitData:
    """One split: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class TrainingData:
    """The three splits of a run; ``test`` is None when the data has no test split."""

    train: SplitData
    val: SplitData
    test: SplitData | None
    val_source: str  # "folder" or "train" (drawn from the training images)


def _is_cifar_source(data: Path, spec: TaskSpec) -> bool:
    return spec.name in CIFAR_TASKS and not (data / "train").is_dir()


def _folder_split(root: Path, spec: TaskSpec, split: str, progress: bool | None = None) -> SplitData:
    # A rare class may be missing from a small val/test split; the training split needs every class.
    folder = ImageFolder(root / split, classes=list(spec.class_names), cache=True, allow_empty=split != "train")
    images, labels = folder.tensors(progress=progress)
    return SplitData(images, labels, str(root / split))


def _cifar_split(path: Path, spec: TaskSpec, train: bool) -> SplitData:
    images, labels, names = load_cifar(path, spec.name, train)
    if tuple(names) != tuple(spec.class_names):
        raise DataError(f"{path}: CIFAR class names {list(names)[:3]}... do not match task {spec.name}; "
                        f"pass the {spec.name} archive")
    return SplitData(images, labels, f"{path}:{'train' if train else 'test'}")


def _check_source(data: Path, spec: TaskSpec, split: str = "train") -> None:
    """A folder needs train/, unless the one split read (test, or a val/ folder) has its own folder."""
    if not data.exists():
        raise DataError(f"data {data} does not exist; pass --data DIR with train/, val/ and test/ class folders")
    if data.is_file() and spec.name not in CIFAR_TASKS:
        raise DataError(f"data {data} is a file; only cifar10/cifar100 read archives, other tasks need a folder "
                        "with train/, val/ and test/ class folders")
    if data.is_dir() and not (data / "train").is_dir() and not (data / split).is_dir() \
            and spec.name not in CIFAR_TASKS:
        raise DataError(f"{data} has no train/ folder; pass a folder with train/, val/ and test/ subfolders "
                        "holding one folder per class (e.g. made by 'foldedcnns data synth')")


def val_indices(n: int, val_split: float | int, seed: int = VAL_SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train, val) index tensors; ``val_split`` is a count (int) or a fraction."""
    count = int(val_split) if isinstance(val_split, int) else max(1, round(n * float(val_split)))
    if count >= n:
        raise DataError(f"cannot hold out {count} validation images from {n} training images; add a val/ "
                        "folder or more training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[count:].sort().values, perm[:count].sort().values


def _subset(split: SplitData, index: torch.Tensor, source: str) -> SplitData:
    return SplitData(split.images[index], split.labels[index], source)


def resize_split(split: SplitData, size: tuple[int, int]) -> SplitData:
    """Resize uint8 images to (H, W) with antialiased bilinear interpolation (compound-scaled models)."""
    if tuple(split.images.shape[-2:]) == tuple(size) or len(split) == 0:
        return split
    return SplitData(resize(split.images, size, mode="bilinear"), split.labels, split.source)


def _fit(split: SplitData, spec: TaskSpec, image_size: tuple[int, int, int]) -> SplitData:
    c, h, w = split.images.shape[1:] if split.images.dim() == 4 else (None, None, None)
    if (c, h, w) != spec.input_size:
        raise DataError(f"{split.source}: images are {c}x{h}x{w} (CxHxW) but task {spec.name} expects "
                        f"{'x'.join(map(str, spec.input_size))}; resize the data to the task's input size")
    return resize_split(split, image_size[1:])


def load_training_data(data: str | Path, spec: TaskSpec, image_size: tuple[int, int, int] | None = None,
                       val_split: float | int = 0.1, progress: bool | None = None) -> TrainingData:
    """Load every split of ``data`` for ``spec``; ``image_size`` (C, H, W) resizes (compound models)."""
    data = Path(data)
    image_size = image_size or spec.input_size
    _check_source(data, spec)
    if _is_cifar_source(data, spec):
        full = _cifar_split(data, spec, train=True)
        test: SplitData | None = _cifar_split(data, spec, train=False)
        train_idx, val_idx = val_indices(len(full), val_split)
        train, val, val_source = _subset(full, train_idx, full.source), _subset(full, val_idx, full.source), "train"
    else:
        train = _folder_split(data, spec, "train", progress)
        if (data / "val").is_dir():
            val, val_source = _folder_split(data, spec, "val", progress), "folder"
        else:
            train_idx, val_idx = val_indices(len(train), val_split)
            train, val, val_source = _subset(train, train_idx, train.source), _subset(train, val_idx, train.source), \
                "train"
        test = _folder_split(data, spec, "test", progress) if (data / "test").is_dir() else None
    if len(train) == 0:
        raise DataError(f"{train.source} holds no training images; add images to its class folders")
    return TrainingData(_fit(train, spec, image_size), _fit(val, spec, image_size),
                        None if test is None else _fit(test, spec, image_size), val_source)


def load_split(data: str | Path, spec: TaskSpec, split: str, image_size: tuple[int, int, int] | None = None,
               val_split: float | int = 0.1) -> SplitData:
    """Load one split (``train``, ``val`` or ``test``) exactly as training saw it."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    data = Path(data)
    image_size = image_size or spec.input_size
    _check_source(data, spec, split)
    if split == "test" or (split == "val" and (data / "val").is_dir()):
        if _is_cifar_source(data, spec):
            return _fit(_cifar_split(data, spec, train=False), spec, image_size)
        if not (data / split).is_dir():
            raise DataError(f"{data} has no {split}/ folder; pass a data folder with a {split} split")
        return _fit(_folder_split(data, spec, split), spec, image_size)
    full = _cifar_split(data, spec, train=True) if _is_cifar_source(data, spec) else _folder_split(data, spec, "train")
    if split == "train" and (data / "val").is_dir():
        return _fit(full, spec, image_size)
    train_idx, val_idx = val_indices(len(full), val_split)
    return _fit(_subset(full, val_idx if split == "val" else train_idx, full.source), spec, image_size)
