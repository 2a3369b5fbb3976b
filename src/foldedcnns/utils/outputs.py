"""The output policy of every command that writes, and one-line messages for file-system errors.

* An existing output is refused unless the caller passes ``overwrite`` (``--overwrite``): see
  :func:`check_output`, called before any work is done.
* Outputs are written under a temporary name beside the final one and renamed on success
  (:mod:`foldedcnns.utils.atomic`), so a failure never touches an existing file.
* Rows worth keeping after a fault go to a file of their own, :func:`partial_path` (``NAME.partial``),
  never over ``NAME``.
* An :class:`OSError` that the user can cause (permission, a folder where a file should be, a full
  disk, a read-only file system, ...) becomes one line naming the path: :func:`describe_os_error`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from foldedcnns.errors import DataError, first_line

PARTIAL_SUFFIX = ".partial"

_REASONS: dict[int, str] = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "it already exists",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EFBIG: "the file would be too large",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files in the system",
    errno.EIO: "input/output error",
    errno.ENOMEM: "out of memory",
    errno.EXDEV: "it is on another file system",
    errno.ETXTBSY: "the file is busy",
}
_HINTS: dict[int, str] = {
    errno.EACCES: "fix its permissions or choose another location",
    errno.EPERM: "fix its permissions or choose another location",
    errno.EISDIR: "name a file, not a folder",
    errno.ENOTDIR: "check the path",
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "free some space or choose another location",
    errno.EROFS: "choose a writable location",
    errno.ENOENT: "check the path",
    errno.EFBIG: "choose another location or a smaller output",
}
# Errors of a write that name no file (a full disk reported by write(), fsync() or close()).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})


def describe_os_error(exc: OSError, path: str | os.PathLike[str] | None = None, action: str = "write") -> str:
    """``cannot <action> <path>: <reason>; <what to do>`` for ``exc`` (``path`` defaults to the error's file).

    When the error names a folder above ``path`` (one that could not be made), it is named as well.
    """
    target = os.fspath(path) if path is not None else (exc.filename if exc.filename is not None else None)
    reason = _REASONS.get(exc.errno or -1) or (exc.strerror or first_line(exc)).lower()
    other = exc.filename
    if path is not None and isinstance(other, (str, os.PathLike)) and os.fspath(other) != os.fspath(path) \
            and Path(path).is_relative_to(other):
        reason = f"{os.fspath(other)}: {reason}"
    hint = _HINTS.get(exc.errno or -1)
    text = f"cannot {action} {target}: {reason}" if target is not None else f"cannot {action} a file: {reason}"
    return f"{text}; {hint}" if hint else text


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Where the rows kept after a fault go: ``NAME.partial`` beside ``NAME``."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _first_existing_ancestor(path: Path) -> Path | None:
    for parent in path.absolute().parents:
        if os.path.lexists(parent):
            return parent
    return None


def check_output(path: str | os.PathLike[str], *, overwrite: bool = False, flag: str = "--out",
                 folder: bool = False) -> Path:
    """Check before any work that ``path`` may be written; return it as a Path.

    Refused: an existing ``path`` unless ``overwrite``; a folder where a file is wanted (or the other
    way round), whatever ``overwrite`` says; a path below a file.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise DataError(f"{flag} {path} is a file; name a folder")
    if not folder and path.is_dir():
        raise DataError(f"{flag} {path} is a folder; name a file")
    if os.path.lexists(path) and not overwrite:
        raise DataError(f"{flag} {path} already exists; pass --overwrite to replace it (only once the new "
                        f"{'folder' if folder else 'file'} is complete) or choose another name")
    ancestor = _first_existing_ancestor(path)
    if ancestor is not None and not ancestor.is_dir():
        raise DataError(f"cannot write {path}: {ancestor} is not a folder; check the path")
    return path


def claim_folder(path: str | os.PathLike[str], markers: tuple[str, ...], *, flag: str = "--out",
                 owner: str = "an earlier run of this command") -> Path:
    """Check that ``path`` may be a command's work folder (a run, a sweep, a demo) and return it.

    Allowed: a new folder, an empty one, or one holding one of ``markers`` (a file that command
    writes, so the folder is its own: it is continued or reused). A file, or a folder of other
    files, is refused: a work folder's files are rewritten as the command goes.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise DataError(f"{flag} {path} is a file; name a folder")
    if path.is_dir() and not any((path / m).exists() for m in markers) and any(path.iterdir()):
        raise DataError(f"{flag} {path} holds other files; pass a new or empty folder (or the folder of {owner})")
    ancestor = _first_existing_ancestor(path)
    if ancestor is not None and not ancestor.is_dir():
        raise DataError(f"cannot write {path}: {ancestor} is not a folder; check the path")
    return path
