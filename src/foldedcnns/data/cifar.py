"""CIFAR-10/100 from the standard python-version archives, read locally and without torchvision.

``path`` may be the archive itself (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``), its
extracted folder (``cifar-10-batches-py/``, ``cifar-100-python/``), or a directory holding either.
The batch files are Python pickles; they are read with an unpickler that only builds dicts, lists,
strings, numbers and NumPy ``uint8`` arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldedcnns.errors import ConfigError, DataError

CIFAR_IMAGE_SHAPE = (3, 32, 32)  # stored as 3072 bytes per image: the R, G and B planes, row-major


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its files."""

    title: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout("CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                           b"labels", b"label_names", 10),
    "cifar100": CifarLayout("CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",),
                            "meta", b"fine_labels", b"fine_label_names", 100),
}


def _reconstruct() -> Callable[..., Any]:
    return np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array re-constructor, wherever numpy keeps it


# The only globals a CIFAR batch needs: NumPy's array and dtype constructors (Python 2 pickles name
# numpy.core, NumPy 2 pickles numpy._core), and bytes from a Python 3 protocol-2 re-pickle. Anything
# else is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("_codecs", "encode"): lambda: codecs.encode,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return factory()


def safe_unpickle(data: bytes, source: str) -> dict[bytes, Any]:
    """Load one CIFAR batch pickle (keys are bytes, as in the Python 2 originals)."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(f"{source} is not a valid CIFAR batch file ({exc}); download the archive again") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{source} is not a valid CIFAR batch file (no dict inside); download the archive again")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}


def cifar_layout(name: str) -> CifarLayout:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in CIFAR_LAYOUTS:
        raise ConfigError(f"unknown CIFAR variant {name!r}; use 'cifar10' or 'cifar100'")
    return CIFAR_LAYOUTS[key]


def _locate(path: Path, layout: CifarLayout) -> tuple[str, Path]:
    """``("tar", archive)`` or ``("dir", extracted folder)`` for ``path``."""
    if path.is_file():
        return "tar", path
    if path.is_dir():
        for folder in (path, path / layout.folder):
            if (folder / layout.meta_file).is_file() or (folder / layout.test_files[0]).is_file():
                return "dir", folder
        if (path / layout.archive).is_file():
            return "tar", path / layout.archive
    where = path if path.is_dir() else path.parent
    raise DataError(f"{layout.title} not found at {path}: put {layout.archive} (from {layout.url}) "
                    f"or its extracted folder {layout.folder}/ in {where}")


def _read_files(kind: str, location: Path, layout: CifarLayout, names: Iterable[str]) -> dict[str, bytes]:
    wanted = set(names)
    found: dict[str, bytes] = {}
    if kind == "dir":
        for name in wanted:
            file = location / name
            if not file.is_file():
                raise DataError(f"{layout.title} folder {location} lacks {name}; "
                                f"extract {layout.archive} again (from {layout.url})")
            found[name] = file.read_bytes()
        return found
    try:
        with tarfile.open(location, "r:*") as tar:
            for member in tar:  # one sequential pass: a .tar.gz cannot be read at random cheaply
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in found:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[base] = handle.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{location} is not a readable {layout.title} archive ({exc}); "
                        f"download {layout.archive} again from {layout.url}") from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{location} lacks {', '.join(missing)}; it is not the python version of "
                        f"{layout.title}; download {layout.archive} from {layout.url}")
    return found


def _batch_arrays(batch: dict[bytes, Any], source: str, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(layout.label_key)
    if data is None or labels is None:
        raise DataError(f"{source} has no b'data' or {layout.label_key!r} entry; "
                        f"it is not a {layout.title} batch file, download {layout.archive} again")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    size = int(np.prod(CIFAR_IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size or len(labels) != len(data):
        raise DataError(f"{source}: expected uint8 data of shape (N, {size}) and N labels, got {data.dtype} "
                        f"{data.shape} and {len(labels)} labels; download {layout.archive} again")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(f"{source}: labels outside 0..{layout.num_classes - 1}; download {layout.archive} again")
    return data.reshape(-1, *CIFAR_IMAGE_SHAPE), labels


def load_cifar(path: str | os.PathLike[str], name: str = "cifar10",
               train: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read the CIFAR-10 or CIFAR-100 training or test set.

    Returns ``(images uint8 (N, 3, 32, 32), labels int64 (N,), class names)``; CIFAR-100 gives the
    100 fine labels. A missing archive raises :class:`DataError` naming the expected file and folder.
    """
    layout = cifar_layout(name)
    kind, location = _locate(Path(path), layout)
    batch_files = layout.train_files if train else layout.test_files
    raw = _read_files(kind, location, layout, (*batch_files, layout.meta_file))
    meta = safe_unpickle(raw[layout.meta_file], f"{location}:{layout.meta_file}")
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.num_classes:
        raise DataError(f"{location}:{layout.meta_file} lacks {layout.num_classes} class names "
                        f"({layout.names_key!r}); download {layout.archive} again")
    images, labels = [], []
    for file in batch_files:
        source = f"{location}:{file}"
        x, y = _batch_arrays(safe_unpickle(raw[file], source), source, layout)
        images.append(x)
        labels.append(y)
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return (torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), class_names)
