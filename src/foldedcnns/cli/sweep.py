"""``foldedcnns sweep``: train tasks x folds, write one summary CSV and an accuracy-vs-fold plot."""

from __future__ import annotations

import argparse
import sys

from foldedcnns.cli.common import add_json_option, format_table, parse_int_list, print_json
from foldedcnns.cli.train import add_training_options, training_overrides
from foldedcnns.training.sweep import SweepConfig, sweep

TABLE_COLUMNS = ("task", "fold", "epochs", "best_epoch", "val_top1", "test_top1", "top1_vs_fold1", "seconds")


def run(args: argparse.Namespace) -> int:
    tasks = [t for t in args.tasks.replace(" ", "").split(",") if t]
    config = SweepConfig(tasks=tasks, folds=parse_int_list(args.folds, "--folds"), data=args.data, out=args.out,
                         base=training_overrides(args))

    def report(row: dict[str, object]) -> None:
        if not args.json:
            print(f"done: {row['task']} fold {row['fold']}: test Top-1 {row['test_top1']:.2f} %", file=sys.stderr)

    result = sweep(config, on_run=report)
    if args.json:
        print_json({"rows": result.rows, "summary_csv": str(result.summary_csv), "plot": str(result.plot)})
        return 0
    print(format_table(list(TABLE_COLUMNS), [[r[c] if r[c] is not None else "" for c in TABLE_COLUMNS]
                                              for r in result.rows]))
    print(f"summary: {result.summary_csv}; plot: {result.plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="train tasks x folds; summary CSV and accuracy-vs-fold plot",
                            description="Train every task at every fold into OUT/<task>/fold<f>/ (restartable: "
                                        "finished runs are reused), then write OUT/summary.csv, summary.json and "
                                        "accuracy_vs_fold.png.")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--folds", default="1,2,4", help="comma-separated folds (default 1,2,4)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder with one data folder per task (DIR/<task>/train ...); for one task, "
                             "its data folder")
    parser.add_argument("--out", required=True, metavar="OUT", help="sweep directory")
    add_training_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)
