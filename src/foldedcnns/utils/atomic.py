"""Atomic file writes: write under a temporary name in the same directory, then rename.

An interrupted write never leaves a half-written file at the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from foldedcnns.errors import DataError


def default_mode() -> int:
    """Permission bits that the process umask allows for a new folder (0o777 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & default_mode())  # mkstemp makes it private (0600); the result is an ordinary file
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a file for writing that appears at ``path`` only once it is complete."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_save(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically.

    Use it for writers that take a path, e.g. ``atomic_save(p, lambda t: torch.save(obj, t))``.
    """
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        writer(tmp)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it is renamed to ``path``.

    On any exception the temporary folder is deleted, so a folder at ``path`` is always complete.
    An existing ``path`` is an error unless ``overwrite``, in which case it is replaced only after the
    new folder is complete.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise DataError(f"output folder {final} already exists; choose a new folder or pass --overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    tmp.chmod(default_mode())  # mkdtemp makes it private (0700); the result is an ordinary folder
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
