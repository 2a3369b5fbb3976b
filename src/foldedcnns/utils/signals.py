"""SIGINT and SIGTERM as an exception, so that every command cleans up on its way out.

Inside :func:`raise_on_signals` (the command line runs every command in it) SIGINT and SIGTERM
raise :class:`Interrupted`, a :class:`KeyboardInterrupt`, in the main thread. The ``with`` and
``finally`` blocks it passes through end worker processes and threads and remove temporary files
and folders; :func:`on_interrupt` attaches a note to it (what was kept, how to resume) that the
command line prints in its one line, and the exit code is 128 + the signal (130, 143).

A second signal while that cleanup runs is ignored for :data:`GRACE_SECONDS`; one after that ends
the process at once.

Worker processes run :func:`worker_init`: they ignore SIGINT (a terminal sends Ctrl-C to the whole
process group; the parent ends its workers), die on SIGTERM (the default), and on Linux get SIGTERM
when their parent dies, so that no worker outlives the command even when it is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


class Interrupted(KeyboardInterrupt):
    """A command was stopped by ``signum`` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_name(exc: BaseException) -> str:
    """``SIGTERM`` for an :class:`Interrupted` by SIGTERM; ``SIGINT`` for any other KeyboardInterrupt."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def exit_code(exc: BaseException) -> int:
    """The shell's exit code of a process ended by the signal behind ``exc``: 128 + signal number."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


@contextlib.contextmanager
def raise_on_signals(signums: tuple[int, ...] = HANDLED_SIGNALS) -> Iterator[None]:
    """While the block runs, the first SIGINT or SIGTERM raises :class:`Interrupted` in the main thread.

    Later signals are ignored for :data:`GRACE_SECONDS` (the cleanup runs undisturbed), then end the
    process with exit code 128 + signal. The previous handlers are restored after the block. Outside
    the main thread (where handlers cannot be set) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first: list[float] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if not first:
            first.append(time.monotonic())
            raise Interrupted(signum)
        if time.monotonic() - first[0] > GRACE_SECONDS:
            os._exit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def on_interrupt(note: str | Callable[[], str | None]) -> Iterator[None]:
    """Attach ``note`` (or what ``note()`` returns, evaluated after the cleanup inside the block) to a
    KeyboardInterrupt leaving the block: the command line prints it (what was kept, how to go on)."""
    try:
        yield
    except KeyboardInterrupt as exc:
        text = note() if callable(note) else note
        if text:
            exc.add_note(text)
        raise


def interrupt_notes(exc: BaseException) -> list[str]:
    """The notes :func:`on_interrupt` attached to ``exc``."""
    return [str(n) for n in getattr(exc, "__notes__", ())]


def worker_init(parent_pid: int | None = None) -> None:
    """Signal settings of a worker process (see the module docstring): a pool's ``initializer``, with
    ``initargs=(os.getpid(),)`` so that a worker whose parent died before the settings took effect exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def terminate_pool(pool: Any) -> None:
    """Send SIGTERM to every worker process of a :class:`concurrent.futures.ProcessPoolExecutor` and
    wait for them (a running task is not waited for, unlike ``shutdown``)."""
    stop = getattr(pool, "terminate_workers", None)  # Python 3.14
    if stop is not None:
        stop()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            process.terminate()
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            process.join(timeout=GRACE_SECONDS)


@contextlib.contextmanager
def cancel_on_error(executor: Any) -> Iterator[Any]:
    """Use ``executor`` (a thread or process pool) in the block; on any exception its queued tasks are
    cancelled (only the running ones are waited for), then the exception goes on."""
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)
