"""Crash reports for real bugs: a per-user folder, files opened without following links, bounded in size.

The folder is ``$XDG_STATE_HOME/foldedcnns`` (an absolute ``XDG_STATE_HOME``), else
``~/.cache/foldedcnns``; it is made private (0700) and must be a real folder owned by the user
(not a link). Each report is a new file ``crash-<time>-<pid>-<random>.log`` created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to the opened folder, so nothing planted in its place (a
link, a folder, another user's file) is ever followed or appended to. A report holds at most
:data:`MAX_REPORT_BYTES` (the traceback's start and end) and only the newest :data:`MAX_REPORTS`
are kept. Writing a report never raises: on any problem it says why it wrote none.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
import time
import traceback
from pathlib import Path

from foldedcnns import __version__

APP_DIR = "foldedcnns"
MAX_REPORT_BYTES = 64 * 1024
MAX_REPORTS = 20
REPORT_PREFIX = "crash-"
REPORT_SUFFIX = ".log"


def crash_dir() -> Path:
    """``$XDG_STATE_HOME/foldedcnns`` when ``XDG_STATE_HOME`` is an absolute path, else ``~/.cache/foldedcnns``."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".cache"
    return base / APP_DIR


def _open_private_dir(folder: Path) -> int:
    """Make ``folder`` (0700) if needed and open it without following a link; check it is the user's own."""
    folder.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise PermissionError(f"{folder} belongs to another user")
        if stat.S_IMODE(info.st_mode) & 0o022:
            raise PermissionError(f"{folder} is writable by other users")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _bounded(text: str, limit: int = MAX_REPORT_BYTES) -> bytes:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return data
    half = limit // 2
    return data[:half] + b"\n[... cut to keep the report small ...]\n" + data[-half:]


def _prune(dir_fd: int, keep: int = MAX_REPORTS) -> None:
    names = sorted(n for n in os.listdir(dir_fd) if n.startswith(REPORT_PREFIX) and n.endswith(REPORT_SUFFIX))
    for name in names[:max(0, len(names) - keep)]:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


def write_crash_report(exc: BaseException, folder: Path | None = None) -> tuple[Path | None, str]:
    """Write the traceback of ``exc`` as a new private report; return ``(path, "")`` or ``(None, why not)``."""
    try:
        folder = folder or crash_dir()
        dir_fd = _open_private_dir(folder)
    except (OSError, RuntimeError, KeyError) as err:  # Path.home() raises RuntimeError/KeyError without a home
        return None, f"no crash report written ({type(err).__name__}: {err})"
    try:
        name = f"{REPORT_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}{REPORT_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        text = (f"foldedcnns {__version__}, Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                f"command: {' '.join(sys.argv)}\n\n" + "".join(traceback.format_exception(exc)))
        with os.fdopen(fd, "wb") as handle:
            handle.write(_bounded(text))
        _prune(dir_fd)
        return folder / name, ""
    except Exception as err:
        return None, f"no crash report written ({type(err).__name__}: {err})"
    finally:
        os.close(dir_fd)
