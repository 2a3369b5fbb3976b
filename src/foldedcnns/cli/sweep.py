"""``foldedcnns sweep``: train tasks x folds x seeds (here or on Ray), write one summary and an accuracy-vs-fold
plot; one line per finished run and an overall bar on stderr."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from foldedcnns.cli.common import add_json_option, format_table, parse_int_list, print_json
from foldedcnns.cli.train import add_training_options, training_overrides
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.training.sweep import DONE, RaySweepOptions, SweepConfig, SweepResult, sweep
from foldedcnns.training.sweep_plan import TEACHERS

TABLE_COLUMNS = ("task", "fold", "seed", "status", "epochs", "best_epoch", "val_top1", "test_top1", "top1_vs_fold1",
                 "seconds")
FOLD_TABLE_COLUMNS = ("task", "fold", "seeds_done", "test_top1_mean", "test_top1_std", "top1_vs_fold1_mean")
RAY_ONLY = ("ray_address", "cpus_per_run", "gpus_per_run", "ray_cpus")


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; seeds are integers >= 0."""
    try:
        seeds = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise ConfigError(f"--seeds must be a comma-separated list of integers >= 0, got {text!r}") from exc
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds must be a non-empty list of integers >= 0, got {text!r}")
    return seeds


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The :class:`SweepConfig` of the command line."""
    base = training_overrides(args)
    seeds = None
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds)
        if base.get("seed"):
            raise ConfigError("give --seed or --seeds, not both (--seeds 0,1,2 trains every run at each seed)")
    cluster = None
    if args.ray:
        defaults = RaySweepOptions()
        cluster = RaySweepOptions(
            address=args.ray_address, num_cpus=args.ray_cpus,
            cpus_per_run=defaults.cpus_per_run if args.cpus_per_run is None else args.cpus_per_run,
            gpus_per_run=defaults.gpus_per_run if args.gpus_per_run is None else args.gpus_per_run)
    else:
        given = [name for name in RAY_ONLY if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"--{given[0].replace('_', '-')} is an option of --ray; add --ray or drop it")
    tasks = [t for t in args.tasks.replace(" ", "").split(",") if t]
    return SweepConfig(tasks=tasks, folds=parse_int_list(args.folds, "--folds"), data=args.data, out=args.out,
                       base=base, seeds=seeds, teacher=args.teacher, ray=cluster)


def run_line(row: dict[str, Any]) -> str:
    """``done: TASK fold F seed S: test Top-1 ...`` (or ``failed:`` / ``not run:`` with the reason)."""
    name = f"{row['task']} fold {row['fold']} seed {row['seed']}"
    if row["status"] != DONE:
        return f"{row['status']}: {name}: {row['error']}"
    top1 = row["test_top1"]
    score = f"test Top-1 {top1:.2f} %" if isinstance(top1, (int, float)) else "no test split"
    epochs = row["epochs"]
    notes = [f"{epochs} epoch{'' if epochs == 1 else 's'}", f"{row['seconds']:.1f} s"]
    if row["resumed_from"]:
        notes.append(f"resumed from epoch {row['resumed_from']}")
    if row["attempts"] and row["attempts"] > 1:
        notes.append(f"{row['attempts']} attempts")
    return f"done: {name}: {score} ({', '.join(notes)})"


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _failure(result: SweepResult) -> DataError:
    failed = result.failed
    first = failed[0]
    return DataError(f"{len(failed)} of {len(result.rows)} runs did not finish (first: {first['task']} fold "
                     f"{first['fold']} seed {first['seed']} {first['status']}: {first['error']}); the others "
                     f"finished; see {result.summary_csv}")


def run(args: argparse.Namespace) -> int:
    config = sweep_config(args)
    total = len(config.tasks) * len(config.folds) * len(config.seeds or [0])
    with tqdm(total=total, desc="sweep", unit="run", file=sys.stderr, dynamic_ncols=True,
              disable=args.json or not args.progress) as bar:

        def report(row: dict[str, Any]) -> None:
            if not args.json:
                bar.write(run_line(row), file=sys.stderr)
            bar.update(1)

        result = sweep(config, on_run=report)
    if args.json:
        print_json({"rows": result.rows, "folds": result.folds, "summary_csv": str(result.summary_csv),
                    "folds_csv": str(result.folds_csv), "plot": str(result.plot)})
    else:
        print(format_table(list(TABLE_COLUMNS), [[_cell(r[c]) for c in TABLE_COLUMNS] for r in result.rows]))
        if any(f["runs"] > 1 for f in result.folds):
            print(format_table(list(FOLD_TABLE_COLUMNS), [[_cell(f[c]) for c in FOLD_TABLE_COLUMNS]
                                                          for f in result.folds]))
        print(f"summary: {result.summary_csv} (per task and fold: {result.folds_csv}); plot: {result.plot}")
    if result.failed:
        raise _failure(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="train tasks x folds x seeds (here or on Ray); summary and plot",
                            description="Train every task at every fold and seed into OUT/<task>/fold<f>/seed<s>/ "
                                        "(restartable: finished runs are read back, interrupted ones continue), "
                                        "then write OUT/summary.csv, summary_folds.csv, summary.json and "
                                        "accuracy_vs_fold.png. A run that fails is recorded and the others go on; "
                                        "the command then exits 1.")
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--folds", default="1,2,4", help="comma-separated folds (default 1,2,4)")
    parser.add_argument("--seeds", default=None, metavar="LIST",
                        help="comma-separated seeds: every (task, fold) is trained once per seed and the summary "
                             "gives the mean and standard deviation (default: --seed)")
    parser.add_argument("--teacher", choices=TEACHERS, default=None,
                        help="fold1: each task's fold-1 run (same seed) is the distillation teacher of its folded "
                             "runs, which start after it (see --distill-loss, --distill-weight)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder with one data folder per task (DIR/<task>/train ...); for one task, "
                             "its data folder")
    parser.add_argument("--out", required=True, metavar="OUT", help="sweep directory")
    add_training_options(parser)
    ray = parser.add_argument_group("Ray (pip install 'foldedcnns[ray]'; docs/training.md)")
    ray.add_argument("--ray", action="store_true", help="run every (task, fold, seed) as a Ray task")
    ray.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="'auto' or HOST:PORT of a running cluster (default: a local Ray on this machine); OUT, "
                          "--data and task descriptions must be on storage every node sees")
    ray.add_argument("--ray-cpus", type=int, default=None, metavar="N", help="CPUs of a local Ray (default: all)")
    ray.add_argument("--cpus-per-run", type=float, default=None, metavar="C",
                     help="CPUs each run reserves, also its PyTorch threads (rounded down; default 1)")
    ray.add_argument("--gpus-per-run", type=float, default=None, metavar="G",
                     help="GPUs each run reserves; below 1 several runs share a GPU (default 0: CPU runs)")
    add_json_option(parser)
    parser.set_defaults(func=run)
