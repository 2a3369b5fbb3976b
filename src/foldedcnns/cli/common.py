"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.utils.text import format_table

__all__ = ["add_json_option", "add_task_options", "format_table", "parse_int_list", "print_json", "resolve_task_arg"]


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="Report all output as JSON, suitable for using foldedcnns programmatically.")


def add_task_options(parser: argparse.ArgumentParser, *, nargs: str | None = None) -> None:
    """Positional TASK (a registered name) plus --description FILE for a user-defined task."""
    parser.add_argument("task", nargs=nargs if nargs else "?", metavar="TASK",
                        help="task name (see 'foldedcnns models')")
    parser.add_argument("--description", metavar="FILE", help="model description JSON of a user-defined task")


def resolve_task_arg(args: argparse.Namespace) -> str:
    """The task named on the command line: TASK, or --description FILE; exactly one."""
    task, desc = getattr(args, "task", None), getattr(args, "description", None)
    if task and desc:
        raise ConfigError("give either TASK or --description FILE, not both")
    if not task and not desc:
        raise ConfigError("no task given; name a TASK (see 'foldedcnns models') or pass --description FILE")
    return desc or task


# Largest entry of an integer list flag (--folds, --batch-sizes): beyond it, sizes overflow C integers.
MAX_LIST_VALUE = 2**31 - 1


def parse_int_list(text: str, what: str = "value") -> list[int]:
    """Parse '1,2,4' into [1, 2, 4]; a bad entry is a one-line ConfigError."""
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise ConfigError(f"{what} must be a comma-separated list of integers, got {text!r}") from exc
    if not values or min(values) < 1 or max(values) > MAX_LIST_VALUE:
        raise ConfigError(f"{what} must be a non-empty list of integers from 1 to {MAX_LIST_VALUE:,}, got {text!r}")
    return values


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
