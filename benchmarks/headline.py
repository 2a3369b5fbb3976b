"""Reproduce the headline table of docs/benchmarks.md on this machine.

    .venv/bin/python benchmarks/headline.py               # CPU: about 20 minutes on 2 cores
    .venv/bin/python benchmarks/headline.py --device cuda # GPU: fp16/bf16, CUDA graphs

For every game and NoScope task it searches fold (1-4), backend, precision and batch size
({256, 1024, 4096}) with :func:`foldedcnns.benchmark.tune.search` (screen, batch sweep, final
interleaved trials), then profiles the best original and the best folded configuration layer by
layer. It writes

* ``benchmarks/results/headline_<device>.csv`` (final trials, the bench CSV format),
  ``..._screen.csv`` (the one-trial screening) and ``..._run.json`` (machine, peaks, profiles, notices);
* ``docs/img/bench_headline_<device>.png`` (final) and ``docs/img/bench_batch_<device>.png`` (screening:
  throughput vs batch size);
* the generated part of ``docs/benchmarks.md`` between ``<!-- headline:<device>:start/end -->``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from docs_report import (
    best_vs_best_markdown,
    detail_markdown,
    fold_profile_markdown,
    layers_markdown,
    machine_markdown,
    profile_summary_markdown,
    replace_section,
)

from foldedcnns.benchmark.grid import parse_pairs
from foldedcnns.benchmark.machine import machine_info
from foldedcnns.benchmark.peak import Peak
from foldedcnns.benchmark.plots import plot_results
from foldedcnns.benchmark.profilers import LayerProfile, LayerTime, can_profile, profile_interleaved
from foldedcnns.benchmark.records import BenchRecord, write_csv
from foldedcnns.benchmark.runner import (
    PreparedCache,
    add_utilization,
    best_peaks,
    default_tasks,
    measure_peaks,
    model_entries,
)
from foldedcnns.benchmark.summary import BestRow, best_configs
from foldedcnns.benchmark.tune import TuneConfig, search
from foldedcnns.models import build_model
from foldedcnns.runtime.device import resolve_device
from foldedcnns.runtime.engine import Engine, default_backends
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
# compile fp32 was slower than onnxruntime fp32 at f = 1 and f = 4 in benchmarks/results/cpu_compile_check.txt,
# and each compilation costs ~10 s, so the CPU search leaves it out (--exclude "" puts it back)
CPU_EXCLUDE = "compile:fp32"
CPU_PRECISIONS = ("fp32", "bf16", "int8")  # int8: calibrated on random input (throughput only), both sides alike
# eager and channels-last won no task at any fold in the previous headline (every one of the 40 bests was
# compile bf16: benchmarks/results/headline_cpu_previous_run.json), so the CPU search times the engines
CPU_BACKENDS = ("compile", "onnxruntime", "openvino")
CUDA_PRECISIONS = ("fp32", "fp16", "bf16")
BATCH_SIZES = (256, 1024, 4096)
SCREEN_BATCH = 256  # cheapest size for ranking backend x precision; the winners are then swept over sizes
MAX_CALL_SECONDS = 3.0  # a batch size whose single call would take longer is not timed (listed in the notes)
PEAK_SECONDS = 0.5  # matmul time per size for each peak sample
PROFILE_BATCH = 256
PROFILE_ITERATIONS = 7
DETAIL_TASK = "sot/timer3"
# every fold at the same configurations, so per-layer rates can be compared across folds
FIXED_PROFILES = {"cpu": (("openvino", "int8"), ("compile", "bf16")),
                  "cuda": (("channels-last", "fp16"),)}
DETAIL_PROFILE = {"cpu": ("openvino", "int8"), "cuda": ("channels-last", "fp16")}  # DETAIL_TASK's layer tables


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", nargs="+", help="default: every game and NoScope task")
    parser.add_argument("--folds", default="1,2,3,4")
    parser.add_argument("--backends", help=f"comma-separated (default on CPU: {','.join(CPU_BACKENDS)})")
    parser.add_argument("--precisions", help="comma-separated (default: fp32,bf16,int8 on CPU; fp32,fp16,bf16 on CUDA)")
    parser.add_argument("--exclude", help=f"backend:precision pairs to leave out (default on CPU: {CPU_EXCLUDE})")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--screen-seconds", type=float, default=0.3)
    parser.add_argument("--screen-trials", type=int, default=2, help="screening repeats (the best one ranks)")
    parser.add_argument("--final-seconds", type=float, default=0.3)
    parser.add_argument("--max-call-seconds", type=float, default=MAX_CALL_SECONDS)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-only", action="store_true",
                        help="keep the measured results in --out-dir and redo only the per-layer profiles")
    parser.add_argument("--render-only", action="store_true",
                        help="time nothing: write the tables again from --out-dir's run file (after a change "
                             "of the report's code)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    return parser.parse_args(argv)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _names(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v) if text else default


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def layer_profile(data: dict) -> LayerProfile:
    """A :class:`LayerProfile` from its ``to_dict`` form in the run file."""
    layers = tuple(LayerTime(la["name"], la["kind"], la["seconds"], la["flops"]) for la in data["layers"])
    fields = {k: data[k] for k in ("model", "fold", "backend", "precision", "batch_size", "images")}
    return LayerProfile(**fields, layers=layers)


def profile_best(best: list[BestRow], device: str, done: list[LayerProfile]) -> list[LayerProfile]:
    """Every task's best configuration of each fold (Original and Folded), layer by layer.

    The folds of a task that share a backend and precision are profiled with their calls interleaved
    (single profiles on a shared machine were off by up to 2x); a profile already in ``done`` (the
    fixed configurations) is reused.
    """
    have = {(p.model, p.fold, p.backend, p.precision): p for p in done}
    groups: dict[tuple[str, str, str], list[int]] = {}
    for row in best:
        if row.mode in ("Original", "Folded") and can_profile(Engine(row.backend, row.precision)):
            groups.setdefault((row.model, row.backend, row.precision), []).append(row.fold)
    out = []
    for (model, backend, precision), folds in groups.items():
        missing = [f for f in folds if (model, f, backend, precision) not in have]
        if missing:
            nets = [build_model(model, fold=f).eval() for f in missing]
            for p in profile_interleaved(nets, Engine(backend, precision, device), batch_size=PROFILE_BATCH,
                                         iterations=PROFILE_ITERATIONS):
                have[(p.model, p.fold, p.backend, p.precision)] = p
        out += [have[(model, f, backend, precision)] for f in folds]
    return out


def profile_fixed(tasks: list[str], folds: tuple[int, ...], device: torch.device) -> list[LayerProfile]:
    """Every task at every fold with the same backend and precision (see FIXED_PROFILES), the folds'
    calls interleaved so that their per-layer rates are comparable."""
    out = []
    for task in tasks:
        for backend, precision in FIXED_PROFILES[device.type]:
            models = [build_model(task, fold=f).eval() for f in folds]
            out += profile_interleaved(models, Engine(backend, precision, str(device)), batch_size=PROFILE_BATCH,
                                       iterations=PROFILE_ITERATIONS)
    return out


def render(device: str, machine: dict, peaks: dict[str, Peak], best: list[BestRow], profiles: list[LayerProfile],
           fixed: list[LayerProfile], notices: list[str], settings: dict[str, str]) -> str:
    parts = [
        f"Generated by `benchmarks/headline.py --device {device}` on {time.strftime('%Y-%m-%d %H:%M')}.",
        "", "**Machine**", "", machine_markdown(machine, peaks, settings), "",
        "**Best original vs best folded** (best = highest median throughput over any backend, precision and batch "
        "size; each ratio is the median over the final interleaved trials of the per-trial ratio best folded / "
        "best original):", "",
        best_vs_best_markdown(best), "",
        "**Every best configuration** ('vs same-config original' divides by the original CNN timed at the same "
        "backend, precision and batch size in the same trials, the paper's TputNorm):", "",
        detail_markdown(best), "",
    ]
    if profiles:
        parts += [f"**Per-layer profiles** of each fold's best configuration "
                  f"(batch {PROFILE_BATCH}, median of {PROFILE_ITERATIONS} calls; shares of the profiled time):", "",
                  profile_summary_markdown(profiles, peaks), ""]
    if fixed:
        parts += ["**The same configuration at every fold** (conv layers' FLOPs/sec, in parentheses their share of "
                  "the measured peak of that precision, then the time share of max-pooling):", "",
                  fold_profile_markdown(fixed, peaks), ""]
        for p in fixed:
            if p.model == DETAIL_TASK and (p.backend, p.precision) == DETAIL_PROFILE[device]:
                parts += [f"Layers of {p.model} f={p.fold}, {p.backend} {p.precision} B={p.batch_size}:", "",
                          layers_markdown(p), ""]
    if notices:
        parts += ["**Skipped or not measured**:", ""] + [f"- {n}" for n in notices] + [""]
    return "\n".join(parts)


def measure_all(args: argparse.Namespace, dev: torch.device, tasks: list[str], backends: tuple[str, ...],
                precisions: tuple[str, ...], exclude: tuple[tuple[str, str], ...]) -> dict:
    """The search for every task; writes the CSVs and figures, returns the run's data."""
    started = time.perf_counter()
    screen_all: list[BenchRecord] = []
    final_all: list[BenchRecord] = []
    notices: list[str] = []
    samples = [measure_peaks(precisions, dev, PEAK_SECONDS)]
    for task in tasks:
        t0 = time.perf_counter()
        config = TuneConfig(target=task, folds=_ints(args.folds), backends=backends, precisions=precisions,
                            batch_sizes=_ints(args.batch_sizes), device=str(dev), screen_batch=SCREEN_BATCH,
                            top_k=1, screen_seconds=args.screen_seconds, screen_warmup=1,
                            screen_trials=args.screen_trials, final_seconds=args.final_seconds, final_warmup=1,
                            trials=args.trials, max_call_seconds=args.max_call_seconds, exclude=exclude)
        cache = PreparedCache(Engine(device=str(dev)), on_notice=lambda n: log(f"  notice: {n}"))
        screen, final = search(model_entries([task], config.folds), cache, config, progress=True)
        screen_all += screen
        final_all += final
        notices += [n for n in cache.notices if n not in notices]
        log(f"{task}: {time.perf_counter() - t0:.0f} s")
        samples.append(measure_peaks(precisions, dev, PEAK_SECONDS))  # one sample per task; the best is kept
    peaks = best_peaks(*samples)
    final_all = add_utilization(final_all, peaks)
    screen_all = add_utilization(screen_all, peaks)
    name = dev.type
    write_csv(args.out_dir / f"headline_{name}.csv", final_all)
    write_csv(args.out_dir / f"headline_{name}_screen.csv", screen_all)
    plot_results(final_all, args.img_dir / f"bench_headline_{name}.png",
                 title=f"headline ({name}): final interleaved trials of each fold's best configuration")
    plot_results(screen_all, args.img_dir / f"bench_batch_{name}.png",
                 title=f"screening ({name}): throughput vs batch size of each fold's best backend/precision")
    settings = {
        "Search": f"folds {args.folds}; backends {', '.join(backends)}; precisions {', '.join(precisions)}"
                  + "".join(f"; without {b} {p}" for b, p in exclude) + "; "
                  f"batch sizes {args.batch_sizes}; screening at B={SCREEN_BATCH} "
                  f"(best of {args.screen_trials} interleaved timings of {args.screen_seconds} s), the top "
                  f"backend/precision of each fold swept over the other batch sizes (same timing; sizes whose "
                  f"single call would take over {args.max_call_seconds:g} s skipped), "
                  f"final {args.trials} interleaved trials ({args.final_seconds} s per configuration, "
                  f"1 warm-up call) of each fold's winner and of the original at that configuration",
        "Peak": f"sampled before the first task and after every task ({PEAK_SECONDS} s per matrix size); "
                "the best sample is the ceiling for utilization",
        "Measurement time": f"{(time.perf_counter() - started) / 60:.1f} min",
    }
    return {"machine": machine_info(str(dev)), "peaks": {k: p.to_dict() for k, p in peaks.items()},
            "best": [b.to_dict() for b in best_configs(final_all)], "notices": notices, "settings": settings,
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    backends = _names(args.backends, default_backends("cuda") if cuda else CPU_BACKENDS)
    precisions = _names(args.precisions, CUDA_PRECISIONS if cuda else CPU_PRECISIONS)
    exclude = parse_pairs(args.exclude if args.exclude is not None else ("" if cuda else CPU_EXCLUDE))
    tasks = args.tasks or default_tasks()
    name = dev.type
    run_file = args.out_dir / f"headline_{name}_run.json"
    with torch_threads(args.threads):
        if args.profile_only or args.render_only:
            if not run_file.is_file():
                raise SystemExit(f"{run_file} does not exist; run without --profile-only/--render-only first")
            run = json.loads(run_file.read_text(encoding="utf-8"))
        else:
            run = measure_all(args, dev, tasks, backends, precisions, exclude)
        best = [BestRow(**{k: v for k, v in b.items() if k != "config"}) for b in run["best"]]
        peaks = {k: Peak(**v) for k, v in run["peaks"].items()}
        started = time.perf_counter()
        if args.render_only:
            fixed = [layer_profile(p) for p in run.get("fixed_profiles", [])]
            profiles = [layer_profile(p) for p in run.get("profiles", [])]
        else:
            fixed = [] if args.no_profile else profile_fixed(list(dict.fromkeys(b.model for b in best)),
                                                              _ints(args.folds), dev)
            profiles = [] if args.no_profile else profile_best(best, str(dev), fixed)
            if profiles or fixed:
                run["settings"]["Profiling time"] = f"{(time.perf_counter() - started) / 60:.1f} min"
    run.update(profiles=[p.to_dict() for p in profiles], fixed_profiles=[p.to_dict() for p in fixed])
    atomic_write_text(run_file, json.dumps(run, indent=2))
    body = render(name, run["machine"], peaks, best, profiles, fixed, run["notices"], run["settings"])
    atomic_write_text(args.out_dir / f"headline_{name}.md", body + "\n")
    doc = args.doc.read_text(encoding="utf-8") if args.doc.is_file() else "# Benchmarks\n"
    atomic_write_text(args.doc, replace_section(doc, f"headline:{name}", body))
    log(f"wrote {args.doc} and {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
