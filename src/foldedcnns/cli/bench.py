"""``foldedcnns bench``, ``peak`` and ``tune``: throughput of FoldedCNNs against the original CNN.

Thin wrappers around :mod:`foldedcnns.benchmark`: parse options, call the library, print tables.
"""

from __future__ import annotations

import argparse
import sys

from foldedcnns.benchmark.peak import measure_peak
from foldedcnns.benchmark.plots import plot_results
from foldedcnns.benchmark.records import write_csv
from foldedcnns.benchmark.runner import (
    DEFAULT_SECONDS,
    DEFAULT_TRIALS,
    DEFAULT_WARMUP,
    BenchConfig,
    default_tasks,
    model_entries,
    run_benchmark,
)
from foldedcnns.benchmark.summary import (
    BEST_HEADERS,
    RATE_LEGEND,
    SUMMARY_HEADERS,
    best_configs,
    best_table,
    summarize,
    summary_table,
)
from foldedcnns.benchmark.tune import TUNE_BATCH_SIZES, TuneConfig, tune
from foldedcnns.cli.common import add_json_option, format_table, parse_int_list, print_json
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import (
    BACKENDS,
    DEFAULT_BACKENDS,
    PRECISIONS,
    Calibration,
    calibrated_registry,
    calibration_notice,
    is_quantized,
    load_calibration,
)
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.utils.outputs import check_output


def parse_names(text: str, known: list[str] | tuple[str, ...], what: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'), each checked against ``known``."""
    names = tuple(n for n in text.replace(" ", "").split(",") if n)
    bad = [n for n in names if n not in known]
    if not names or bad:
        raise ConfigError(f"unknown {what} {', '.join(bad) or repr(text)}; use a comma-separated list of "
                          f"{', '.join(known)}")
    return names


def notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr)


def _device_type(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def parse_pairs(text: str | None) -> tuple[tuple[str, str], ...]:
    """'compile:fp16,eager:bf16' -> (('compile', 'fp16'), ('eager', 'bf16')), each name checked."""
    pairs = []
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        backend, sep, precision = item.partition(":")
        if not sep:
            raise ConfigError(f"--exclude takes BACKEND:PRECISION pairs such as compile:fp16, got {item!r}")
        pairs.append((parse_names(backend, list(BACKENDS), "backend")[0],
                      parse_names(precision, list(PRECISIONS), "precision")[0]))
    return tuple(pairs)


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
    config = BenchConfig(
        tasks=tuple(args.tasks or default_tasks()),
        folds=tuple(parse_int_list(args.folds, "--folds")),
        batch_sizes=tuple(parse_int_list(args.batch_sizes, "--batch-sizes")),
        backends=parse_names(args.backends or ",".join(DEFAULT_BACKENDS[_device_type(args.device)]), list(BACKENDS),
                             "backend"),
        precisions=parse_names(args.precisions, list(PRECISIONS), "precision"),
        device=args.device, warmup=args.warmup, iterations=args.iterations,
        seconds=None if args.iterations is not None else (args.seconds or DEFAULT_SECONDS),
        trials=args.trials, threads=args.threads, peak_seconds=args.peak_seconds)
    calibration = bench_calibration(config.tasks, config.precisions, args.data)
    int8_notice = calibration_notice(config.precisions, calibration)
    if int8_notice is not None:
        notice(int8_notice)
    run = run_benchmark(config, registry=calibrated_registry(BACKENDS, calibration), progress=not args.json,
                        on_notice=notice)
    if int8_notice is not None:
        run.notices.insert(0, int8_notice)
    if not run.records:
        raise ConfigError("every configuration was skipped (see the notices); choose other --backends/--precisions")
    write_csv(args.out, run.records)
    if args.plot:
        plot_results(run.records, args.plot)
    if args.json:
        print_json({**run.to_dict(), "summary": [r.to_dict() for r in summarize(run.records)],
                    "best": [b.to_dict() for b in best_configs(run.records)]})
        return 0
    print(format_table(SUMMARY_HEADERS, summary_table(summarize(run.records))))
    print()
    print("Best configuration per model and fold (medians over trials; 'vs best original' = best vs best):")
    print(format_table(BEST_HEADERS, best_table(best_configs(run.records))))
    if any(is_quantized(r.precision) for r in run.records):
        print(RATE_LEGEND)
    print()
    for precision, peak in run.peaks.items():
        unit = "GFLOP/s" if peak.unit == "FLOP/s" else "GOP/s (int8 integer ops)"
        print(f"peak {precision} on {peak.device}: {peak.flops_per_sec / 1e9:.1f} {unit} "
              f"(best {peak.matrix_size}x{peak.matrix_size} matmul, {peak.kernel}, {peak.threads} threads)")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def run_peak(args: argparse.Namespace) -> int:
    precisions = parse_names(args.precision, list(PRECISIONS), "precision")
    with torch_threads(args.threads):
        peaks = [measure_peak(args.device, p, seconds=args.seconds) for p in precisions]
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
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--threads", type=int, help="intra-op threads for PyTorch and ONNX Runtime "
                                                     "(default: PyTorch's default, one per core)")


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure throughput of original vs folded CNNs (CSV, table, plot)",
                           description="Time each task's original CNN and FoldedCNNs at the same batch size "
                                       "(images) on every backend and precision, interleaved over trials.")
    bench.add_argument("--tasks", nargs="+", metavar="TASK",
                       help="task names, compound/<task> or checkpoint files (default: every game and NoScope task)")
    bench.add_argument("--folds", default="1,2,3,4", help="folds to time (default: 1,2,3,4)")
    bench.add_argument("--batch-sizes", default="1024", help="images per call (default: 1024)")
    bench.add_argument("--backends", help=f"comma-separated, from {', '.join(BACKENDS)} "
                                          f"(default: {','.join(DEFAULT_BACKENDS['cpu'])}; "
                                          f"on CUDA {','.join(DEFAULT_BACKENDS['cuda'])})")
    bench.add_argument("--precisions", default="fp32", help=f"comma-separated, from {', '.join(PRECISIONS)} "
                                                            "(int8: openvino and onnxruntime quantize the model)")
    bench.add_argument("--data", metavar="DIR", help="data set (DIR/train/<class>/...) of the one task benchmarked: "
                                                     "int8 is calibrated on its images (default: random input)")
    _common(bench)
    bench.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed calls before each timing")
    budget = bench.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="timed calls per configuration and trial")
    budget.add_argument("--seconds", type=float,
                        help=f"time each configuration for about S seconds per trial (default: {DEFAULT_SECONDS})")
    bench.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="interleaved trials (medians reported)")
    bench.add_argument("--peak-seconds", type=float, default=0.5,
                       help="matmul time per size for the peak samples; 0 leaves Utilization empty")
    bench.add_argument("--out", required=True, help="CSV file to write (atomically)")
    bench.add_argument("--plot", help="PNG: throughput vs batch size per fold, and speedup per task")
    bench.add_argument("--overwrite", action="store_true", help="replace an existing --out / --plot")
    add_json_option(bench)
    bench.set_defaults(func=run_bench)

    peak = sub.add_parser("peak", help="measured dense matmul FLOPs/sec: the ceiling behind Utilization")
    _common(peak)
    peak.add_argument("--precision", default="fp32", help="comma-separated precisions (default: fp32)")
    peak.add_argument("--seconds", type=float, default=1.0, help="timed budget per matrix size")
    add_json_option(peak)
    peak.set_defaults(func=run_peak)

    tuner = sub.add_parser("tune", help="search fold, backend, precision and batch size for the fastest setup")
    tuner.add_argument("target", metavar="TASK|CKPT", help="a task name or a checkpoint file")
    _common(tuner)
    tuner.add_argument("--folds", default="1,2,3,4", help="folds to search for a task (a checkpoint keeps its own)")
    tuner.add_argument("--backends", help=f"comma-separated backends (default: {','.join(DEFAULT_BACKENDS['cpu'])}; "
                                          f"on CUDA {','.join(DEFAULT_BACKENDS['cuda'])})")
    tuner.add_argument("--exclude", metavar="B:P,...",
                       help="backend:precision pairs to leave out, e.g. compile:fp16 (each compile takes ~10 s)")
    tuner.add_argument("--precisions", default="fp32,bf16,fp16",
                       help=f"comma-separated, from {', '.join(PRECISIONS)} (int8: calibrated on --data's train split)")
    tuner.add_argument("--batch-sizes", default=",".join(map(str, TUNE_BATCH_SIZES)), help="images per call")
    tuner.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="trials of the final measurement")
    tuner.add_argument("--screen-seconds", type=float, default=0.5, help="timing per configuration while screening")
    tuner.add_argument("--seconds", type=float, default=1.0, help="timing per configuration in the final stage")
    tuner.add_argument("--max-call-seconds", type=float,
                       help="skip batch sizes whose single call would take longer than this (estimated)")
    tuner.add_argument("--peak-seconds", type=float, default=0.5,
                       help="matmul time per size for the peak samples; 0 leaves Utilization empty")
    tuner.add_argument("--data", metavar="DIR", help="image folder (DIR/test/<class>/...) to measure the accuracy "
                                                     "cost of reduced precision (needs a checkpoint); int8 is "
                                                     "calibrated on DIR/train (else DIR/val)")
    tuner.add_argument("--max-accuracy-drop", type=float, metavar="PT",
                       help="leave out precisions that lose more than PT accuracy points on --data")
    tuner.add_argument("--out", help="CSV of the final measurement")
    tuner.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_json_option(tuner)
    tuner.set_defaults(func=run_tune)
