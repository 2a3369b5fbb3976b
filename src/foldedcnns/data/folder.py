"""Image-folder data sets (``root/<class>/<image>``) read with Pillow, without torchvision.

Class folders are numbered in sorted order, or in the order of a task's class names when those are
given (so labels match the model's outputs). Images are decoded to RGB ``uint8`` tensors and, by
default, cached in memory: the crops are tiny and are read for many epochs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from foldedcnns.data.imageio import IMG_EXTENSIONS, check_size, is_image_file, read_image, resize_nearest
from foldedcnns.errors import DataError
from foldedcnns.utils.signals import cancel_on_error

PROGRESS_MIN_IMAGES = 2000  # show a progress bar when decoding at least this many images
DECODE_THREADS = 4  # Pillow releases the GIL while decoding, so a few threads overlap file reads
NAMES_SHOWN = 5  # how many offending names an error message lists


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in list(items)[:NAMES_SHOWN])
    return shown + (f" and {len(items) - NAMES_SHOWN} more" if len(items) > NAMES_SHOWN else "")


def _class_dirs(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory; "
                        "expected ROOT/<class>/<image> (e.g. the train/ folder of a data set)")
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def find_classes(root: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
    """Sorted class folder names of ``root`` and their indices.

    Raises :class:`DataError` naming ``root`` when it is missing or has no class folder.
    """
    root = Path(root)
    classes = _class_dirs(root)
    if not classes:
        raise DataError(f"no class folders in {root}; expected ROOT/<class>/<image> with one folder per class")
    return classes, {c: i for i, c in enumerate(classes)}


def _match_classes(root: Path, folders: list[str], classes: Sequence[str], allow_empty: bool) -> dict[str, int]:
    """Map folder names to the indices of ``classes``.

    Folders named like the classes map by name. Folders named ``0 .. K-1`` (the original NoScope layout)
    map by index when no folder carries a class name.
    """
    wanted = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in folders if f not in wanted]
    if unknown and all(f.isdigit() and int(f) < len(classes) for f in folders) and not set(folders) & set(wanted):
        mapping = {f: int(f) for f in folders}
        missing = [str(i) for i in range(len(classes)) if str(i) not in mapping]
    else:
        if unknown:
            raise DataError(f"{root} has folders that are not classes of the task: {_names(unknown)}; "
                            f"expected folders named {_names(list(classes))} (remove or rename the others)")
        mapping = {f: wanted[f] for f in folders}
        missing = [c for c in classes if c not in mapping]
    if missing and not allow_empty:
        raise DataError(f"{root} has no folder for classes {_names(missing)}; "
                        "add them (one folder per class) or use a task whose classes match")
    return mapping


class ImageFolder(Dataset):
    """Images in ``root/<class>/<image>``; items are ``(uint8 tensor (3, H, W), class index)``.

    Args:
        root: the folder holding one subfolder per class.
        classes: class names in label order (e.g. a task's ``class_names``). Folder names must match
            them; labels follow this order, not the sorted order. ``None``: sorted folder names.
        cache: keep decoded images in memory after the first read.
        size: ``(height, width)``: images of another size are resized (nearest neighbour). ``None``:
            every image must have the size of the first one read.
        allow_empty: accept classes without images (a rare class missing from a small split).

    Errors (one line, naming the file or folder): missing root, unknown or missing class folders, a
    class without images, a corrupt image, an image of the wrong size.
    """

    def __init__(self, root: str | os.PathLike[str], *, classes: Sequence[str] | None = None, cache: bool = True,
                 size: tuple[int, int] | None = None, allow_empty: bool = False) -> None:
        self.root = Path(root)
        self.size = check_size(size)
        self.cache = cache
        folders = _class_dirs(self.root)
        if classes is None:
            if not folders:
                raise DataError(f"no class folders in {self.root}; expected ROOT/<class>/<image>")
            self.classes = folders
            folder_to_idx = {c: i for i, c in enumerate(folders)}
        else:
            self.classes = [str(c) for c in classes]
            folder_to_idx = _match_classes(self.root, folders, self.classes, allow_empty)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        empty = []
        for folder, idx in sorted(folder_to_idx.items(), key=lambda item: (item[1], item[0])):
            files = sorted(e.name for e in os.scandir(self.root / folder) if e.is_file() and is_image_file(e.name))
            if not files:
                empty.append(folder)
            self.samples.extend((str(self.root / folder / name), idx) for name in files)
        if empty and not allow_empty:
            raise DataError(f"class folders without images in {self.root}: {_names(empty)} "
                            f"(allowed extensions: {' '.join(IMG_EXTENSIONS)}); add images or remove the folders")
        if not self.samples:
            raise DataError(f"no images in {self.root}; expected ROOT/<class>/<image> "
                            f"with extensions {' '.join(IMG_EXTENSIONS)}")
        self.targets = [idx for _, idx in self.samples]
        self._images: list[torch.Tensor | None] = [None] * len(self.samples)
        self._expected: tuple[int, int] | None = self.size

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, i: int) -> torch.Tensor:
        path = self.samples[i][0]
        image = read_image(path)
        hw = image.shape[:2]
        if self.size is not None:
            image = resize_nearest(image, self.size)
        elif self._expected is None:
            self._expected = hw
        elif hw != self._expected:
            raise DataError(f"image {path} is {hw[0]}x{hw[1]} but the others are "
                            f"{self._expected[0]}x{self._expected[1]} (HxW); pass size=(H, W) to resize")
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self._images[i]
        if image is None:
            image = self._decode(i)
            if self.cache:
                self._images[i] = image
        return image.clone(), self.samples[i][1]

    def tensors(self, *, progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every image once: ``(uint8 (N, 3, H, W), int64 (N,))``, in sample order.

        ``progress`` shows a bar on stderr; by default only for folders of at least
        :data:`PROGRESS_MIN_IMAGES` images. With ``cache`` the images stay in memory as views of the
        returned tensor.
        """
        todo = [i for i, img in enumerate(self._images) if img is None]
        if todo and self._expected is None:
            self._images[todo[0]] = self._decode(todo[0])  # fixes the expected size before threads start
            todo = todo[1:]
        show = len(self) >= PROGRESS_MIN_IMAGES if progress is None else progress
        decoded = dict(zip(todo, self._decode_many(todo, show), strict=True))
        images = [self._images[i] if self._images[i] is not None else decoded[i] for i in range(len(self))]
        batch = torch.stack(images)
        if self.cache:
            self._images = list(batch.unbind(0))
        return batch, torch.tensor(self.targets, dtype=torch.int64)

    def _decode_many(self, indices: list[int], show: bool) -> list[torch.Tensor]:
        if not indices:
            return []
        with cancel_on_error(ThreadPoolExecutor(max_workers=DECODE_THREADS)) as pool:  # Ctrl-C: no waiting
            results = pool.map(self._decode, indices)
            return list(tqdm(results, total=len(indices), desc=f"decoding {self.root.name}", unit="img",
                             disable=not show, leave=False))

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"
