"""``foldedcnns demo``: synthetic data, original CNN and FoldedCNN trained, evaluated, benchmarked, reported."""

from __future__ import annotations

import argparse
import sys

from foldedcnns.benchmark.summary import utilization_footnotes
from foldedcnns.cli.common import add_device_option, add_json_option, format_table, print_json
from foldedcnns.runtime.device import resolve_device
from foldedcnns.workflows.demo import DEFAULT_FOLD, DEFAULT_TASK, TABLE_HEADERS, run_demo, table_rows


def run(args: argparse.Namespace) -> int:
    def say(text: str) -> None:
        if not args.json:
            print(f"[demo] {text}", file=sys.stderr, flush=True)

    device = str(resolve_device(args.device))
    report = run_demo(args.out, task=args.task, fold=args.fold, quick=args.quick, device=device, seed=args.seed,
                      progress=not args.no_progress, on_phase=say)
    if args.json:
        print_json(report.to_dict())
        return 0
    print(format_table(TABLE_HEADERS, table_rows(report)))
    for line in utilization_footnotes(r.utilization for r in report.rows):
        print(line)
    print(f"\n{report.verdict}; speedup = best folded / best original throughput on {device}.")
    print(f"report: {report.files['report']}  plot: {report.files['plot']}  timings: {report.files['bench_csv']}")
    print(f"total {sum(report.phase_seconds.values()):.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in report.phase_seconds.items()) + ")")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo", help="train an original CNN and its FoldedCNN on synthetic data, then compare accuracy and speed",
        description="Draw synthetic game-screen crops, train the original CNN and a FoldedCNN, evaluate both, "
                    "benchmark both on every available backend, and write a table, a plot and a Markdown report. "
                    "--quick is a smoke run; docs/inference.md ('foldedcnns demo') says what each setting does.")
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"a game task (default: {DEFAULT_TASK})")
    parser.add_argument("--fold", type=int, default=DEFAULT_FOLD,
                        help=f"fold of the FoldedCNN (default: {DEFAULT_FOLD})")
    parser.add_argument("--quick", action="store_true", help="less data and fewer epochs: a smoke run")
    add_device_option(parser, "cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_json_option(parser)
    parser.set_defaults(func=run)
