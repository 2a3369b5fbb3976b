"""``foldedcnns`` entry point: one parser, one subcommand per module, one error handler.

Each command module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a function ``(args) -> int``. Errors the user can fix
(:class:`~foldedcnns.errors.FoldedCNNsError`) print one line and exit 1; Ctrl-C exits 130;
anything else is a bug: one line, the traceback in a log file, exit 3.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from foldedcnns import __version__
from foldedcnns.errors import FoldedCNNsError

# One entry per line: each command lives in foldedcnns/cli/<name>.py.
COMMAND_MODULES: tuple[str, ...] = (
    "models",
    "analysis",
    "predict",
    "export",
    "demo",
    "train",
    "evaluate",
    "sweep",
    "bench",
    "data",
)

EXIT_ERROR = 1
EXIT_BUG = 3
EXIT_INTERRUPT = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="foldedcnns",
        description="FoldedCNNs: fold f images into one wider CNN input for higher inference throughput.",
    )
    parser.add_argument("--version", action="version", version=f"foldedcnns {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"foldedcnns.cli.{name}").register(sub)
    return parser


def _log_bug(exc: BaseException) -> Path:
    log = Path(tempfile.gettempdir()) / "foldedcnns-crash.log"
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"foldedcnns {__version__}, Python {sys.version.split()[0]}\n")
        handle.write("".join(traceback.format_exception(exc)))
    return log


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except FoldedCNNsError as exc:
        print(f"foldedcnns: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at interpreter exit
        return 0
    except KeyboardInterrupt:
        print("foldedcnns: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    except Exception as exc:
        log = _log_bug(exc)
        print(f"foldedcnns: unexpected error: {type(exc).__name__}: {exc} (traceback in {log})", file=sys.stderr)
        return EXIT_BUG


def entry() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
