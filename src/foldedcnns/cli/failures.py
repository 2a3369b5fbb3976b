"""How a command ends: its exit code and, when it fails, exactly one line on stderr.

======================================  ====  ===============================================
what happened                           exit  the line
======================================  ====  ===============================================
success                                 0     (none)
a bad flag (argparse)                   2     ``foldedcnns: error: ... (see --help)``
:class:`FoldedCNNsError`                1     ``foldedcnns: error: <message>``
a file-system error (:class:`OSError`)  1     ``foldedcnns: error: cannot ... <path>: <reason>``
out of memory, a non-UTF-8 text file    1     ``foldedcnns: error: ...``
SIGINT / SIGTERM                        130   ``foldedcnns: interrupted by SIGINT; <notes>``
                                        143
anything else: a bug                    3     ``foldedcnns: unexpected error: ...`` + where the
                                              crash report is (:mod:`foldedcnns.cli.crash`)
======================================  ====  ===============================================
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable

from foldedcnns.cli.crash import write_crash_report
from foldedcnns.errors import FoldedCNNsError, first_line
from foldedcnns.utils.outputs import describe_os_error
from foldedcnns.utils.signals import exit_code, interrupt_notes, raise_on_signals, signal_name

EXIT_ERROR = 1
EXIT_BUG = 3
PREFIX = "foldedcnns: error: "
# How PyTorch words a failed allocation (a RuntimeError, or torch.OutOfMemoryError, a subclass).
PILLOW_MODULES = r"PIL(\.|$)"
# How PyTorch words a tensor size beyond its integers (a width of 1e9 times a multiplier).
SIZE_FAILURES = ("size calculation overflowed", "Overflow when unpacking long")
MEMORY_FAILURES = ("can't allocate memory", "not enough memory", "out of memory", "DefaultCPUAllocator")


def _say(text: str) -> None:
    print(" ".join(text.split()), file=sys.stderr, flush=True)  # one line, whatever the text holds


def resource_error(exc: BaseException) -> str | None:
    """The one-line message for a failed allocation, or None when ``exc`` is something else."""
    if isinstance(exc, MemoryError):
        return f"out of memory ({first_line(exc)}); use smaller sizes (batch size, image size, model widths)"
    if isinstance(exc, RuntimeError) and any(text in str(exc) for text in MEMORY_FAILURES):
        return f"out of memory: {first_line(exc, 240)}; use smaller sizes (batch size, image size, model widths)"
    if isinstance(exc, (RuntimeError, OverflowError, TypeError)) and any(text in str(exc) for text in SIZE_FAILURES):
        return f"a size is too large: {first_line(exc, 240)}; use smaller sizes (batch size, image size, model widths)"
    return None


def _failure(exc: Exception) -> int:
    if isinstance(exc, OSError):
        _say(PREFIX + describe_os_error(exc, action="use"))
        return EXIT_ERROR
    if isinstance(exc, UnicodeDecodeError):
        _say(PREFIX + f"a text file is not valid UTF-8 ({first_line(exc)}); save it as UTF-8")
        return EXIT_ERROR
    message = resource_error(exc)
    if message is not None:
        _say(PREFIX + message)
        return EXIT_ERROR
    report, why_not = write_crash_report(exc)
    where = f"crash report in {report}" if report is not None else why_not
    _say(f"foldedcnns: unexpected error: {type(exc).__name__}: {first_line(exc)} (a bug; {where})")
    return EXIT_BUG


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one command with SIGINT/SIGTERM raising (:mod:`foldedcnns.utils.signals`); return its exit code.

    Pillow's warnings about the file it is decoding (corrupt EXIF, a large image) are silenced: a file
    that cannot be read is reported by the one error line, one that can is not a problem.
    """
    with raise_on_signals(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=PILLOW_MODULES)
        try:
            return int(func(args) or 0)
        except FoldedCNNsError as exc:
            _say(PREFIX + str(exc))
            return EXIT_ERROR
        except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at interpreter exit
            return 0
        except KeyboardInterrupt as exc:
            notes = "; ".join(interrupt_notes(exc))
            _say(f"foldedcnns: interrupted by {signal_name(exc)}" + (f"; {notes}" if notes else ""))
            return exit_code(exc)
        except Exception as exc:
            return _failure(exc)
