"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from foldedcnns.data.video import DECODE_FRAMES, DecodeOptions
from foldedcnns.errors import ConfigError
from foldedcnns.inference.decoding import DecodePlan
from foldedcnns.inference.pipeline import RunOptions
from foldedcnns.runtime.backends import BACKENDS, PRECISIONS, quantizing_backends
from foldedcnns.runtime.device import DEVICE_HELP
from foldedcnns.runtime.engine import DEFAULT_BACKEND, DEFAULT_DEVICE, DEFAULT_PRECISION, Engine
from foldedcnns.utils.text import format_table

__all__ = ["add_decode_options", "add_device_option", "add_engine_options", "add_json_option", "add_task_options",
           "decode_plan_from_args", "engine_from_args", "format_table", "parse_int_list", "print_json",
           "resolve_task_arg", "run_options_from_args"]


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


def add_device_option(parser: argparse.ArgumentParser, default: str = DEFAULT_DEVICE) -> None:
    """``--device``: the one rule for every command (``auto``, ``cpu``, ``cuda``, ``cuda:i``; checked by
    :func:`foldedcnns.runtime.device.check_device` when the command runs)."""
    parser.add_argument("--device", default=default, help=f"{DEVICE_HELP} (default: {default})")


def add_engine_options(parser: argparse.ArgumentParser, *, device: str = DEFAULT_DEVICE,
                       threads_help: str = "intra-op threads for the model (default: PyTorch's)") -> None:
    """The engine of a command that runs one model: ``--backend``, ``--precision``, ``--device``, ``--threads``
    and ``--data DIR`` (int8 calibration images). :func:`engine_from_args` reads them."""
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=list(BACKENDS),
                        help=f"how the model runs (default: {DEFAULT_BACKEND}; docs/engines.md compares them)")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=list(PRECISIONS),
                        help=f"default: {DEFAULT_PRECISION}; int8 is quantized by {', '.join(quantizing_backends())}")
    add_device_option(parser, device)
    parser.add_argument("--threads", type=int, default=None, help=threads_help)
    parser.add_argument("--data", metavar="DIR", help="int8: the data set whose DIR/train (else DIR/val) images "
                                                      "calibrate the engine (up to 300 seeded images)")


def engine_from_args(args: argparse.Namespace) -> Engine:
    """The :class:`Engine` of the options :func:`add_engine_options` added (calibration images are loaded by
    the entry point, which knows the task: ``engine.for_deployment(task, args.data)``)."""
    return Engine(args.backend, args.precision, args.device, args.threads)


def add_decode_options(parser: argparse.ArgumentParser) -> None:
    """How videos are decoded (``predict``, ``scrape``, ``data cache``): ``--decoders``, ``--decode-frames``,
    ``--fast-decode``. :func:`decode_plan_from_args` reads them."""
    group = parser.add_argument_group("video decoding (docs/inference.md has the measured figures)")
    group.add_argument("--decoders", default="auto", metavar="N|auto",
                       help="processes that decode a video file by segments cut at keyframes, one thread each; rows "
                            "are the same for every N (default auto: one per core for frames over 640x480, else 1; "
                            "with --ray, the decode tasks each video is cut for)")
    group.add_argument("--decode-frames", default="all", choices=list(DECODE_FRAMES),
                       help="decode every frame (all, default), only reference frames (ref) or only keyframes (key); "
                            "every frame still gets a row, labelled from the nearest decoded frame, with a decoded "
                            "column")
    group.add_argument("--fast-decode", action="store_true",
                       help="skip the H.264/HEVC deblocking filter: faster decoding, slightly blockier frames")


def decode_plan_from_args(args: argparse.Namespace) -> DecodePlan:
    """The :class:`DecodePlan` of the options :func:`add_decode_options` added."""
    text = str(args.decoders).strip().lower()
    if text == "auto":
        decoders = None
    else:
        try:
            decoders = int(text)
        except ValueError:
            raise ConfigError(f"--decoders must be an integer >= 1 or auto, got {args.decoders!r}") from None
    return DecodePlan(decoders, DecodeOptions(args.decode_frames, args.fast_decode))


def run_options_from_args(args: argparse.Namespace) -> RunOptions:
    """The :class:`RunOptions` of ``predict`` and ``scrape``: decoding, task check, overwrite, progress and the
    opt-in stage measurement (options a command does not have take their defaults)."""
    return RunOptions(decode_plan_from_args(args), task_check=not getattr(args, "no_task_check", False),
                      overwrite=args.overwrite, progress=not args.no_progress,
                      profile_frames=getattr(args, "profile_frames", 0))
