"""``foldedcnns`` entry point: one parser, one subcommand per module, one error handler.

Each command module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
parser and sets ``func`` to a function ``(args) -> int``. Errors the user can fix
(:class:`~foldedcnns.errors.FoldedCNNsError`, file-system and memory errors) print one line and exit 1;
SIGINT/SIGTERM exit 130/143 after cleaning up; anything else is a bug: one line, a crash report in a
per-user folder, exit 3 (:mod:`foldedcnns.cli.failures`, :mod:`foldedcnns.cli.crash`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from foldedcnns import __version__
from foldedcnns.cli.failures import EXIT_BUG, EXIT_ERROR, run_command

# One entry per line: each command lives in foldedcnns/cli/<name>.py.
COMMAND_MODULES: tuple[str, ...] = (
    "models",
    "analysis",
    "predict",
    "scrape",
    "watch",
    "export",
    "demo",
    "train",
    "evaluate",
    "sweep",
    "bench",
    "data",
    "serve",
    "loadtest",
)

EXIT_INTERRUPT = 130  # SIGINT; SIGTERM exits 143 (128 + signal)
__all__ = ["EXIT_BUG", "EXIT_ERROR", "EXIT_INTERRUPT", "build_parser", "entry", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the problem and where to look, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"foldedcnns: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def build_parser(commands: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The command line's parser with ``commands`` (default: all) registered."""
    parser = _Parser(
        prog="foldedcnns",
        description="FoldedCNNs: fold f images into one wider CNN input for higher inference throughput.",
    )
    parser.add_argument("--version", action="version", version=f"foldedcnns {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in commands:
        importlib.import_module(f"foldedcnns.cli.{name}").register(sub)
    return parser


def commands_for(argv: Sequence[str]) -> Sequence[str]:
    """The command modules to load for ``argv``: only the named command's when the first argument names one
    (each module imports its own libraries, so ``predict`` does not pay for matplotlib or Ray), else all
    (``--help``, ``--version``, a typo that deserves the list of commands)."""
    first = argv[0] if argv else None
    return (first,) if first in COMMAND_MODULES else COMMAND_MODULES


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(commands_for(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    return run_command(args.func, args)


def entry() -> None:
    try:
        code = main()
    except KeyboardInterrupt:  # Ctrl-C before the command started (while Python imports the libraries)
        print("foldedcnns: interrupted by SIGINT", file=sys.stderr)
        code = EXIT_INTERRUPT
    raise SystemExit(code)


if __name__ == "__main__":
    entry()
