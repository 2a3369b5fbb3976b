"""Atomic file writes: write under a temporary name in the same directory, then rename.

An interrupted or failed write never leaves a half-written file at the final name, and never
touches a file already there. A file-system error of the write (permission, a full disk, a
read-only file system, a folder or file in the way) becomes a one-line :class:`DataError` naming
the final path (:func:`foldedcnns.utils.outputs.describe_os_error`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from foldedcnns.errors import DataError, first_line
from foldedcnns.utils.outputs import WRITE_ERRNOS, describe_os_error

# How torch.save's C++ writer reports a failed write (a full disk): a RuntimeError, not an OSError.
TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def default_mode() -> int:
    """Permission bits that the process umask allows for a new folder (0o777 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


class PendingFile:
    """A file being written at ``tmp``; on success it is renamed to ``final`` (deleted if ``final`` is None).

    The writer may point ``final`` at another name in the same folder (e.g. ``NAME.partial`` after a
    fault) before the block ends.
    """

    def __init__(self, tmp: Path, final: Path | None) -> None:
        self.tmp, self.final = tmp, final


@contextlib.contextmanager
def pending_file(path: str | os.PathLike[str], suffix: str = "") -> Iterator[PendingFile]:
    """Yield a :class:`PendingFile` whose temporary file lies next to ``path``; see :func:`atomic_path`."""
    final = Path(path)
    if final.is_dir():
        raise DataError(f"cannot write {final}: it is a folder; name a file")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    except OSError as exc:
        raise DataError(describe_os_error(exc, final)) from exc
    os.close(fd)
    pending = PendingFile(Path(tmp_name), final)
    try:
        pending.tmp.chmod(0o666 & default_mode())  # mkstemp makes it private (0600); the result is ordinary
        yield pending
        if pending.final is None:
            pending.tmp.unlink()
        else:
            os.replace(pending.tmp, pending.final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            pending.tmp.unlink(missing_ok=True)
        if _is_write_error(exc, pending.final or final, pending.tmp):
            raise DataError(describe_os_error(exc, pending.final or final)) from exc
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            pending.tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    with pending_file(path, suffix) as pending:
        yield pending.tmp


def _is_write_error(exc: OSError, final: Path, tmp: Path) -> bool:
    """True when ``exc`` is about writing ``final`` (its temporary file, its folder, or a full disk)."""
    if exc.filename is None:
        return exc.errno in WRITE_ERRNOS
    names = {os.fspath(final), os.fspath(tmp), os.fspath(final.parent)}
    return os.fspath(exc.filename) in names or os.fspath(getattr(exc, "filename2", None) or "") in names


@contextlib.contextmanager
def pending_open(path: str | os.PathLike[str], mode: str = "w",
                 **kwargs: Any) -> Iterator[tuple[PendingFile, IO[Any]]]:
    """:func:`atomic_open` that also yields the :class:`PendingFile` (its ``final`` may be changed)."""
    with pending_file(path) as pending, open(pending.tmp, mode, **kwargs) as handle:
        yield pending, handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a file for writing that appears at ``path`` only once it is complete."""
    with pending_open(path, mode, **kwargs) as (_, handle):
        yield handle


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_save(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically.

    Use it for writers that take a path, e.g. ``atomic_save(p, lambda t: torch.save(obj, t))``.
    """
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        try:
            writer(tmp)
        except RuntimeError as exc:
            if any(text in str(exc) for text in TORCH_WRITE_FAILURES):
                raise DataError(f"cannot write {path}: the write failed ({first_line(exc)}); is the disk "
                                "full? free some space or choose another location") from exc
            raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it is renamed to ``path``.

    On any exception the temporary folder is deleted, so a folder at ``path`` is always complete.
    An existing ``path`` is an error unless ``overwrite``, in which case it is replaced only after the
    new folder is complete.
    """
    final = Path(path)
    if os.path.lexists(final) and not final.is_dir():
        raise DataError(f"output folder {final} is a file; name a folder")
    if final.exists() and not overwrite:
        raise DataError(f"output folder {final} already exists; choose a new folder or pass --overwrite")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as exc:
        raise DataError(describe_os_error(exc, final)) from exc
    try:
        tmp.chmod(default_mode())  # mkdtemp makes it private (0700); the result is an ordinary folder
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        inside = exc.filename is not None and (os.fspath(exc.filename).startswith(os.fspath(tmp))
                                               or os.fspath(exc.filename) == os.fspath(final))
        if inside or (exc.filename is None and exc.errno in WRITE_ERRNOS):
            raise DataError(describe_os_error(exc, final)) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
