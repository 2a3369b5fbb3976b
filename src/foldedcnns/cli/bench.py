"""``foldedcnns bench``, ``peak`` and ``tune``: throughput of FoldedCNNs against the original CNN.

Thin wrappers around :mod:`foldedcnns.benchmark`: parse options, call the library, print tables.
"""

from __future__ import annotations

import argparse
import sys

from foldedcnns.benchmark.grid import parse_names, parse_pairs
from foldedcnns.benchmark.peak import DEFAULT_SECONDS as PEAK_SECONDS
from foldedcnns.benchmark.peak import measure_peak
from foldedcnns.benchmark.plots import plot_results
from foldedcnns.benchmark.records import write_csv
from foldedcnns.benchmark.runner import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_FOLDS,
    DEFAULT_TIMED_SECONDS,
    DEFAULT_TRIALS,
    DEFAULT_WARMUP,
    BenchConfig,
    default_tasks,
    model_entries,
    run_benchmark,
)
from foldedcnns.benchmark.summary import (
    BEST_HEADERS,
    SUMMARY_HEADERS,
    best_configs,
    best_table,
    summarize,
    summary_table,
    table_legend,
)
from foldedcnns.benchmark.tune import (
    FINAL_SECONDS,
    FINAL_TRIALS,
    SCREEN_SECONDS,
    TUNE_BATCH_SIZES,
    TUNE_PRECISIONS,
    TuneConfig,
)
from foldedcnns.cli.common import add_device_option, add_json_option, format_table, parse_int_list, print_json
from foldedcnns.data.calibration import Calibration, load_calibration
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import BACKENDS, PRECISIONS, is_quantized, quantizing_backends
from foldedcnns.runtime.device import check_device
from foldedcnns.runtime.engine import Engine, default_backends
from foldedcnns.utils.outputs import check_output
from foldedcnns.workflows.tune import tune

__all__ = ["bench_calibration", "parse_names", "parse_pairs", "register"]


def notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr)


def _ints(values: tuple[int, ...]) -> str:
    """``(1, 2, 3)`` -> ``'1,2,3'``: a library default as the flag's text."""
    return ",".join(map(str, values))


def bench_calibration(tasks: tuple[str, ...], precisions: tuple[str, ...], data: str | None) -> Calibration | None:
    """int8 calibration images from ``--data DIR`` for the one task of ``tasks`` (None without int8 or data)."""
    if data is None or not any(is_quantized(p) for p in precisions):
        return None
    specs = {e.config.task.name: e.config.task for e in model_entries(list(tasks), (1,))}
    if len(specs) != 1:
        raise ConfigError(f"--data calibrates int8 on the images of one task, but --tasks names {len(specs)} "
                          f"({', '.join(specs)}); run one bench per task or drop --data")
    return load_calibration(data, next(iter(specs.values())))


def run_bench(args: argparse.Namespace) -> int:
    check_output(args.out, overwrite=args.overwrite)
    if args.plot:
        check_output(args.plot, overwrite=args.overwrite, flag="--plot")
    tasks = tuple(args.tasks or default_tasks())
    precisions = parse_names(args.precisions, list(PRECISIONS), "precision")
    config = BenchConfig(
        tasks=tasks,
        folds=tuple(parse_int_list(args.folds, "--folds")),
        batch_sizes=tuple(parse_int_list(args.batch_sizes, "--batch-sizes")),
        backends=parse_names(args.backends or ",".join(default_backends(check_device(args.device))), list(BACKENDS),
                             "backend"),
        precisions=precisions,
        device=args.device, warmup=args.warmup, iterations=args.iterations,
        seconds=None if args.iterations is not None else (args.seconds or DEFAULT_TIMED_SECONDS),
        trials=args.trials, threads=args.threads, peak_seconds=args.peak_seconds,
        calibration=bench_calibration(tasks, precisions, args.data))
    run = run_benchmark(config, progress=not args.json, on_notice=notice)
    if not run.records:
        raise ConfigError("every configuration was skipped (see the notices); choose other --backends/--precisions")
    write_csv(args.out, run.records)
    if args.plot:
        plot_results(run.records, args.plot)
    if args.json:
        print_json({**run.to_dict(), "summary": [r.to_dict() for r in summarize(run.records)],
                    "best": [b.to_dict() for b in best_configs(run.records)]})
        return 0
    summary, best = summarize(run.records), best_configs(run.records)
    print(format_table(SUMMARY_HEADERS, summary_table(summary)))
    print()
    print("Best configuration per model and fold (medians over trials; 'vs best original' = best vs best):")
    print(format_table(BEST_HEADERS, best_table(best)))
    for line in table_legend([*summary, *best]):
        print(line)
    print()
    for precision, peak in run.peaks.items():
        unit = "GFLOP/s" if peak.unit == "FLOP/s" else "GOP/s (int8 integer ops)"
        print(f"peak {precision} on {peak.device}: {peak.flops_per_sec / 1e9:.1f} {unit} "
              f"(best {peak.matrix_size}x{peak.matrix_size} matmul, {peak.kernel}, {peak.threads} threads)")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def run_peak(args: argparse.Namespace) -> int:
    precisions = parse_names(args.precision, list(PRECISIONS), "precision")
    peaks = [measure_peak(Engine(precision=p, device=args.device, threads=args.threads), seconds=args.seconds)
             for p in precisions]
    if args.json:
        print_json([p.to_dict() for p in peaks])
        return 0
    print(format_table(["device", "precision", "G per s", "unit", "matrix", "kernel", "threads"],
                       [[p.device, p.precision, round(p.flops_per_sec / 1e9, 1), p.unit, p.matrix_size, p.kernel,
                         p.threads] for p in peaks]))
    return 0


def run_tune(args: argparse.Namespace) -> int:
    if args.out:
        check_output(args.out, overwrite=args.overwrite)
    backends = parse_names(args.backends, list(BACKENDS), "backend") if args.backends else None
    config = TuneConfig(
        target=args.target, folds=tuple(parse_int_list(args.folds, "--folds")), backends=backends,
        precisions=parse_names(args.precisions, list(PRECISIONS), "precision"),
        batch_sizes=tuple(parse_int_list(args.batch_sizes, "--batch-sizes")), device=args.device,
        trials=args.trials, screen_seconds=args.screen_seconds, final_seconds=args.seconds, threads=args.threads,
        peak_seconds=args.peak_seconds, max_call_seconds=args.max_call_seconds, data=args.data,
        max_accuracy_drop=None if args.max_accuracy_drop is None else args.max_accuracy_drop / 100,
        exclude=parse_pairs(args.exclude))
    result = tune(config, progress=not args.json, on_notice=notice)
    if args.out:
        write_csv(args.out, result.final)
    if args.json:
        print_json(result.to_dict())
        return 0
    print("Final interleaved measurement of each fold's winner (medians over trials):")
    print(format_table(BEST_HEADERS, best_table(result.best)))
    for line in table_legend(result.best):
        print(line)
    if result.costs:
        print()
        print("Accuracy cost of reduced precision (test split, against fp32 eager):")
        print(format_table(["backend", "precision", "images", "accuracy", "fp32 accuracy", "drop", "agreement"],
                           [[c.backend, c.precision, c.images, f"{100 * c.accuracy:.2f}%",
                             f"{100 * c.fp32_accuracy:.2f}%", f"{100 * c.accuracy_drop:+.2f} pt",
                             f"{100 * c.agreement:.2f}%"] for c in result.costs]))
    rec = result.recommended
    print()
    if rec is None:
        print("no configuration could run; see the notices")
        return 1
    speed = f", {rec.speedup:.2f}x the best original" if rec.speedup is not None else ""
    print(f"recommended: {rec.mode.lower()} f={rec.fold}, {rec.config}: {rec.throughput:,.0f} images/s{speed}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    add_device_option(parser, "cpu")
    parser.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime "
                                                     "(default: PyTorch's default, one per core)")


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure throughput of original vs folded CNNs (CSV, table, plot)",
                           description="Time each task's original CNN and FoldedCNNs at the same batch size "
                                       "(images) on every backend and precision, interleaved over trials.")
    bench.add_argument("--tasks", nargs="+", metavar="TASK",
                       help="task names, compound/<task> or checkpoint files (default: every game and NoScope task)")
    bench.add_argument("--folds", default=_ints(DEFAULT_FOLDS), help=f"folds to time (default: {_ints(DEFAULT_FOLDS)})")
    bench.add_argument("--batch-sizes", default=_ints(DEFAULT_BATCH_SIZES),
                       help=f"images per call (default: {_ints(DEFAULT_BATCH_SIZES)})")
    bench.add_argument("--backends", help=f"comma-separated, from {', '.join(BACKENDS)} "
                                          f"(default: {','.join(default_backends('cpu'))}; "
                                          f"on CUDA {','.join(default_backends('cuda'))})")
    bench.add_argument("--precisions", default="fp32",
                       help=f"comma-separated, from {', '.join(PRECISIONS)} "
                            f"(int8: {', '.join(quantizing_backends())} quantize the model)")
    bench.add_argument("--data", metavar="DIR", help="data set (DIR/train/<class>/...) of the one task benchmarked: "
                                                     "int8 is calibrated on its images (default: random input)")
    _common(bench)
    bench.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed calls before each timing")
    budget = bench.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="timed calls per configuration and trial")
    budget.add_argument("--seconds", type=float,
                        help="time each configuration for about S seconds per trial "
                             f"(default: {DEFAULT_TIMED_SECONDS})")
    bench.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="interleaved trials (medians reported)")
    bench.add_argument("--peak-seconds", type=float, default=PEAK_SECONDS,
                       help=f"matmul time per size for the peak samples (default: {PEAK_SECONDS}); "
                            "0 leaves Utilization empty")
    bench.add_argument("--out", required=True, help="CSV file to write (atomically)")
    bench.add_argument("--plot", help="PNG: throughput vs batch size per fold, and speedup per task")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing --out / --plot")
    add_json_option(bench)
    bench.set_defaults(func=run_bench)

    peak = sub.add_parser("peak", help="measured dense matmul FLOPs/sec: the ceiling behind Utilization")
    _common(peak)
    peak.add_argument("--precision", default="fp32", help="comma-separated precisions (default: fp32)")
    peak.add_argument("--seconds", type=float, default=PEAK_SECONDS,
                      help=f"timed budget per matrix size (default: {PEAK_SECONDS})")
    add_json_option(peak)
    peak.set_defaults(func=run_peak)

    tuner = sub.add_parser("tune", help="search fold, backend, precision and batch size for the fastest setup")
    tuner.add_argument("target", metavar="TASK|CKPT", help="a task name or a checkpoint file")
    _common(tuner)
    tuner.add_argument("--folds", default=_ints(DEFAULT_FOLDS),
                       help=f"folds to search for a task (default: {_ints(DEFAULT_FOLDS)}; a checkpoint keeps its own)")
    tuner.add_argument("--backends", help=f"comma-separated backends (default: {','.join(default_backends('cpu'))}; "
                                          f"on CUDA {','.join(default_backends('cuda'))})")
    tuner.add_argument("--exclude", metavar="B:P,...",
                       help="backend:precision pairs to leave out, e.g. compile:fp16 (each compile is a slow one-off "
                            "step: docs/engines.md)")
    tuner.add_argument("--precisions", default=",".join(TUNE_PRECISIONS),
                       help=f"comma-separated, from {', '.join(PRECISIONS)} (int8: calibrated on --data's train split)")
    tuner.add_argument("--batch-sizes", default=_ints(TUNE_BATCH_SIZES),
                       help=f"images per call (default: {_ints(TUNE_BATCH_SIZES)})")
    tuner.add_argument("--trials", type=int, default=FINAL_TRIALS,
                       help=f"trials of the final measurement (default: {FINAL_TRIALS})")
    tuner.add_argument("--screen-seconds", type=float, default=SCREEN_SECONDS,
                       help=f"timing per configuration while screening (default: {SCREEN_SECONDS})")
    tuner.add_argument("--seconds", type=float, default=FINAL_SECONDS,
                       help=f"timing per configuration in the final stage (default: {FINAL_SECONDS})")
    tuner.add_argument("--max-call-seconds", type=float,
                       help="skip batch sizes whose single call would take longer than this (estimated)")
    tuner.add_argument("--peak-seconds", type=float, default=PEAK_SECONDS,
                       help=f"matmul time per size for the peak samples (default: {PEAK_SECONDS}); "
                            "0 leaves Utilization empty")
    tuner.add_argument("--data", metavar="DIR", help="the checkpoint's data set (DIR/train, DIR/test/<class>/...): "
                                                     "the accuracy cost of reduced precision on its test split, by "
                                                     "evaluate's loop; int8 is calibrated on DIR/train (else DIR/val)")
    tuner.add_argument("--max-accuracy-drop", type=float, metavar="PT",
                       help="leave out precisions that lose more than PT accuracy points on --data")
    tuner.add_argument("--out", help="CSV of the final measurement")
    tuner.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_json_option(tuner)
    tuner.set_defaults(func=run_tune)
