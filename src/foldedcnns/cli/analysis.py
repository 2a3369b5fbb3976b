"""``foldedcnns flops`` and ``foldedcnns intensity``: costs and arithmetic intensity of models."""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys

from foldedcnns.analysis import flops_summary, intensity_rows, layer_intensity_rows, model_flops
from foldedcnns.analysis.intensity import V100_RIDGE_FLOPS_PER_BYTE
from foldedcnns.analysis.plots import plot_intensity
from foldedcnns.analysis.report import CONVENTIONS, INTENSITY_CSV_HEADER, default_intensity_tasks
from foldedcnns.cli.common import (
    add_json_option,
    add_task_options,
    format_table,
    parse_int_list,
    print_json,
    resolve_task_arg,
)
from foldedcnns.models import build_model
from foldedcnns.utils.outputs import check_output

MAX_MULTIPLIER = 64.0  # hidden widths times 64 is far beyond any model here (sqrt(f) is 2 at f = 4)


def run_flops(args: argparse.Namespace) -> int:
    task = resolve_task_arg(args)
    config = build_model(task, fold=args.fold, multiplier=args.multiplier, init=False).config
    report = model_flops(config)
    summary = flops_summary(config, report, per_layer=args.per_layer)
    if args.json:
        print_json(summary)
        return 0
    scalar_fields = [[k, str(v)] for k, v in summary.items() if k not in ("layers", "uncounted")]
    print(format_table(["field", "value"], scalar_fields))
    if args.per_layer:
        print()
        print(format_table(
            ["layer", "kind", "input", "output", "params", "macs", "share"],
            [[layer.name, layer.kind, "x".join(map(str, layer.input_shape)), "x".join(map(str, layer.output_shape)),
              layer.params, layer.macs, f"{layer.macs / max(report.macs, 1):.1%}"] for layer in report.layers],
        ))
        if report.uncounted:
            print("not counted (zero FLOPs): " + ", ".join(f"{k} x{v}" for k, v in sorted(report.uncounted.items())))
    return 0


def run_intensity(args: argparse.Namespace) -> int:
    if args.plot:
        check_output(args.plot, overwrite=args.overwrite, flag="--plot")
    tasks = list(args.tasks) + ([args.description] if args.description else [])
    tasks = tasks or default_intensity_tasks()
    folds = parse_int_list(args.folds, "--folds")
    if args.per_layer:
        rows = [r for t in tasks for r in layer_intensity_rows(t, folds, args.batch_size, args.bytes_per_element,
                                                                args.ridge)]
        print(format_table(["task", "mode", "fold", "layer", "kind", "AI", "bound"],
                           [[r.task, r.mode, r.fold, r.layer, r.kind, round(r.arithmetic_intensity, 1),
                             "memory" if r.memory_bound else "compute"] for r in rows]))
        print(f"ridge point: {args.ridge:.1f} FLOP/byte (--ridge)")
        return 0
    rows = intensity_rows(tasks, folds, args.batch_size, args.bytes_per_element, compound=not args.no_compound,
                          convention=args.convention)
    if args.format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(INTENSITY_CSV_HEADER)
        for r in rows:
            writer.writerow([r.task, r.mode, r.fold, r.batch_size, f"{r.bytes_per_element:g}", f"{r.ops:.0f}",
                             f"{r.bytes:.0f}", f"{r.arithmetic_intensity:.4f}"])
        sys.stdout.write(buffer.getvalue())
    else:
        print(format_table(["task", "mode", "fold", "AI (FLOP/byte)"],
                           [[r.task, r.mode, r.fold, round(r.arithmetic_intensity, 2)] for r in rows]))
    if args.convention == "original" and any(r.mode == "Compound" for r in rows):
        print("note: Compound rows use the original ai.py's effective batch B/phi (--convention exact for the "
              "true batch)", file=sys.stderr)
    if args.plot:
        plot_intensity(rows, args.plot, ridge=args.ridge)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not 0 < value < math.inf:  # also NaN
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _multiplier(text: str) -> float:
    value = _positive_float(text)
    if not value <= MAX_MULTIPLIER:
        raise argparse.ArgumentTypeError(f"expected a multiplier from 0 to {MAX_MULTIPLIER}, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    flops = sub.add_parser("flops", help="parameters, MACs and FLOPs of a model at a fold")
    add_task_options(flops)
    flops.add_argument("--fold", type=_positive_int, default=1, help="fold f (default 1: the original CNN)")
    flops.add_argument("--multiplier", type=_multiplier, default=None, help="hidden-width multiplier "
                       f"(default sqrt(f); at most {MAX_MULTIPLIER})")
    flops.add_argument("--per-layer", action="store_true", help="add a per-layer table")
    add_json_option(flops)
    flops.set_defaults(func=run_flops)

    ai = sub.add_parser("intensity", help="arithmetic intensity of original, folded and compound-scaled models")
    ai.add_argument("tasks", nargs="*", metavar="TASK", help="tasks (default: every game and NoScope task)")
    ai.add_argument("--description", metavar="FILE", help="also analyse a user-defined task description")
    ai.add_argument("--batch-size", type=_positive_int, default=1024, help="images per batch (default 1024)")
    ai.add_argument("--bytes-per-element", type=_positive_float, default=2.0, help="2 for fp16 (default), 4 fp32")
    ai.add_argument("--folds", default="1,2,3,4", help="comma-separated folds (default 1,2,3,4)")
    ai.add_argument("--format", choices=("csv", "table"), default="table")
    ai.add_argument("--plot", metavar="FILE.png", help="write a plot of intensity vs fold")
    ai.add_argument("--overwrite", action="store_true", help="replace an existing --plot")
    ai.add_argument("--per-layer", action="store_true", help="per-layer view: which layers are memory-bound")
    ai.add_argument("--ridge", type=_positive_float, default=V100_RIDGE_FLOPS_PER_BYTE,
                    help="ridge point in FLOP/byte for --per-layer (default: V100 fp16, %(default).0f)")
    ai.add_argument("--convention", choices=CONVENTIONS, default="original",
                    help="'original' reproduces ai.py (compound rows at batch B/phi); 'exact' uses the true batch")
    ai.add_argument("--no-compound", action="store_true", help="leave out the compound-scaled baselines")
    ai.set_defaults(func=run_intensity)


__all__ = ["register"]
