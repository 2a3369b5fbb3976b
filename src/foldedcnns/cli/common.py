"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from foldedcnns.errors import ConfigError


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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table with right-aligned numbers."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row, raw in zip(cells, rows, strict=True):
        lines.append("  ".join(c.rjust(w) if isinstance(v, (int, float)) else c.ljust(w)
                               for c, w, v in zip(row, widths, raw, strict=True)))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
