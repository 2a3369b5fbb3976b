"""The demo: synthetic data, an original CNN and its FoldedCNN trained, evaluated and benchmarked.

:func:`run_demo` does, in ``out``:

1. ``data/``: synthetic game-screen crops for the task (:func:`foldedcnns.data.synth.generate_synthetic`),
   kept between runs when the same settings drew them;
2. ``runs/original`` and ``runs/folded-f<f>``: the original CNN (f = 1) and the FoldedCNN trained with
   the same recipe (:func:`foldedcnns.training.trainer.train`);
3. Top-1/Top-5 of both best checkpoints on the test split (:func:`foldedcnns.training.trainer.evaluate`);
4. ``bench.csv``: both models timed on every backend available here, interleaved over trials, with
   FLOPs/sec and utilization of the measured peak (:func:`foldedcnns.benchmark.runner.run_benchmark`);
   each model is reported on its fastest backend and the speedup is best folded over best original;
5. ``demo.png``, ``report.md`` and ``demo.json``.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from foldedcnns.benchmark.peak import DEFAULT_SECONDS as PEAK_SECONDS
from foldedcnns.benchmark.records import utilization_note, write_csv
from foldedcnns.benchmark.runner import DEFAULT_TIMED_SECONDS, BenchConfig, BenchRun, run_benchmark
from foldedcnns.benchmark.summary import BestRow, best_configs, format_utilization, summarize, utilization_footnotes
from foldedcnns.data.calibration import Calibration, load_calibration
from foldedcnns.data.synth import generate_synthetic
from foldedcnns.errors import ConfigError
from foldedcnns.models import TaskSpec, get_task
from foldedcnns.runtime.backends import available_backends, is_quantized
from foldedcnns.runtime.engine import Engine, default_backends
from foldedcnns.training.trainer import TrainConfig, TrainResult, evaluate, train
from foldedcnns.utils.atomic import atomic_write_text
from foldedcnns.utils.outputs import claim_folder
from foldedcnns.utils.plotting import bars_height, grouped_barh, new_figure, save_figure
from foldedcnns.utils.text import markdown_table

DEFAULT_TASK = "lol/goldnumber-fraction"
DEFAULT_FOLD = 4
# The paper's claim this demo checks: the FoldedCNN's Top-1 within this many points of the original's.
TOP1_TOLERANCE = 1.5
DATA_DIR, RUNS_DIR = "data", "runs"
ORIGINAL_RUN = "original"
BENCH_CSV, PLOT_PNG, REPORT_MD, REPORT_JSON = "bench.csv", "demo.png", "report.md", "demo.json"
SYNTH_MANIFEST = "synth.json"
DEMO_MARKER = ".foldedcnns-demo"  # marks a folder the demo owns, so a rerun may replace its runs
TRAIN_RECIPE = "quick"
# every precision an engine runs here: int8 is calibrated on the demo's own training images
CPU_PRECISIONS = ("fp32", "bf16", "int8")
CUDA_PRECISIONS = ("fp32", "fp16")
PLOT_SIZE = (10.0, 3.8)  # inches
PLOT_DPI = 110
GIGA = 1e9


@dataclass(frozen=True)
class DemoSettings:
    """How much work the demo does. ``per_class`` synthetic images per class (70/15/15 split),
    epochs of the ``quick`` recipe for the original CNN (``original_epochs``) and the FoldedCNN
    (``epochs``, the first ``slot_warmup`` with tied separate slots, :mod:`foldedcnns.training.slots`),
    and the benchmark's batch (images per call), timed seconds per configuration and trial, trials, and
    peak-measurement seconds. ``precisions`` (default: every precision of the device) are searched on
    every available backend."""

    per_class: int
    original_epochs: int
    epochs: int
    slot_warmup: int
    bench_batch: int
    bench_seconds: float
    bench_trials: int
    peak_seconds: float
    precisions: tuple[str, ...] | None = None


# Sized for a small CPU: FULL trains the original CNN until it has converged (docs/training.md) and the
# FoldedCNN for twice as many epochs (it needs more steps, each cheaper on a CPU), and times with bench's
# defaults; QUICK trains both on a few images per class for a few epochs (a smoke run). docs/inference.md
# ("foldedcnns demo") describes both.
FULL = DemoSettings(per_class=1500, original_epochs=15, epochs=30, slot_warmup=10, bench_batch=1024,
                    bench_seconds=DEFAULT_TIMED_SECONDS, bench_trials=3, peak_seconds=PEAK_SECONDS)
QUICK = DemoSettings(per_class=80, original_epochs=9, epochs=9, slot_warmup=3, bench_batch=256, bench_seconds=0.25,
                     bench_trials=2, peak_seconds=0.2)


@dataclass(frozen=True)
class DemoRow:
    """One model of the demo's table. ``speedup`` is best-vs-best throughput over the original; ``top1`` is
    the fp32 model's, ``engine_top1`` the same checkpoint's on its best engine (``backend``, e.g. int8)."""

    model: str
    fold: int
    top1: float
    top5: float
    engine_top1: float
    throughput: float
    speedup: float | None
    flops_per_sec: float
    utilization: float | None
    backend: str
    checkpoint: str
    train_seconds: float


@dataclass
class DemoReport:
    """What the demo measured, and where it wrote it."""

    task: str
    fold: int
    quick: bool
    device: str
    settings: DemoSettings
    images: dict[str, int]
    rows: list[DemoRow]
    backends: list[str]
    notices: list[str]
    phase_seconds: dict[str, float]
    files: dict[str, str]
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def top1_gap(self) -> float:
        """FoldedCNN Top-1 minus original Top-1, in points."""
        return self.rows[1].top1 - self.rows[0].top1

    @property
    def within_tolerance(self) -> bool:
        return abs(self.top1_gap) <= TOP1_TOLERANCE

    @property
    def verdict(self) -> str:
        """One sentence on the accuracy comparison (a --quick run trains too little to make one)."""
        where = "within" if self.within_tolerance else "NOT within"
        text = f"FoldedCNN Top-1 {self.top1_gap:+.2f} points from the original's ({where} {TOP1_TOLERANCE})"
        if self.quick:
            text += "; --quick is a smoke run that trains too little to compare accuracy, run without it"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "fold": self.fold, "quick": self.quick, "device": self.device,
                "settings": asdict(self.settings), "images": self.images,
                "rows": [{**asdict(r), "utilization_note": utilization_note(r.utilization)} for r in self.rows],
                "top1_gap": self.top1_gap, "top1_tolerance": TOP1_TOLERANCE,
                "within_tolerance": self.within_tolerance, "backends": self.backends, "notices": self.notices,
                "phase_seconds": self.phase_seconds, "files": self.files, "machine": self.machine}


TABLE_HEADERS = ("model", "fold", "Top-1 %", "Top-1 % on best engine", "images/s", "speedup", "GFLOP/s",
                 "utilization", "best engine")


def table_rows(report: DemoReport) -> list[list[Any]]:
    """The demo's table (:data:`TABLE_HEADERS`) with numbers formatted for reading."""
    return [[r.model, r.fold, f"{r.top1:.2f}", f"{r.engine_top1:.2f}", f"{r.throughput:,.0f}",
             "" if r.speedup is None else f"{r.speedup:.2f}x", f"{r.flops_per_sec / GIGA:.2f}",
             format_utilization(r.utilization), r.backend] for r in report.rows]



def _synthetic_data(spec: TaskSpec, root: Path, settings: DemoSettings, seed: int, progress: bool,
                    ) -> dict[str, int]:
    """Draw the data set, or keep the one a previous run drew with the same task, size and seed."""
    manifest = root / SYNTH_MANIFEST
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text(encoding="utf-8"))
        except (ValueError, OSError):  # damaged (or not UTF-8): draw the data again
            saved = {}
        if not isinstance(saved, dict):
            saved = {}
        if (saved.get("task"), saved.get("per_class"), saved.get("seed")) == (spec.name, settings.per_class, seed):
            return dict(saved["counts"])
    return generate_synthetic(spec, root, per_class=settings.per_class, seed=seed, overwrite=True,
                              progress=progress)


def claim_output(out: Path) -> Path:
    """Use ``out`` for the demo: a new or empty folder, or one an earlier demo wrote (it is reused;
    :func:`foldedcnns.utils.outputs.claim_folder` is the rule), marked as the demo's."""
    out = claim_folder(out, (DEMO_MARKER,), owner="an earlier demo")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).touch()
    return out


def _fresh_run_dir(path: Path) -> Path:
    """The run directory of a model, emptied of an earlier demo's run (the folder is the demo's own)."""
    if path.exists():
        shutil.rmtree(path)
    return path


def demo_precisions(device: str, settings: DemoSettings) -> tuple[str, ...]:
    """The precisions the demo searches on ``device``."""
    if settings.precisions is not None:
        return settings.precisions
    return CUDA_PRECISIONS if device.startswith("cuda") else CPU_PRECISIONS


def _benchmark(checkpoints: list[Path], device: str, settings: DemoSettings, precisions: tuple[str, ...],
               calibration: Calibration | None, progress: bool) -> tuple[BenchRun, list[str]]:
    backends = available_backends(device)
    candidates = [b for b in default_backends(device) if b in backends]
    config = BenchConfig(tasks=tuple(str(c) for c in checkpoints), folds=(1,), batch_sizes=(settings.bench_batch,),
                         backends=tuple(candidates), precisions=precisions, device=device,
                         seconds=settings.bench_seconds, trials=settings.bench_trials,
                         peak_seconds=settings.peak_seconds, calibration=calibration)
    return run_benchmark(config, progress=progress), candidates


def _best(rows: list[BestRow], mode: str, fold: int) -> BestRow:
    for row in rows:
        if row.mode == mode and row.fold == fold:
            return row
    raise ConfigError(f"the benchmark measured no {mode} model at fold {fold}; every backend was skipped")


def demo_figure(report: DemoReport, run: BenchRun) -> Figure:
    """Two panels: Top-1 of both models, and the median throughput of both on every backend and
    precision measured, one row each (horizontal bars: engine names never print over each other)."""
    summary = summarize(run.records)
    labels = list(dict.fromkeys(f"{s.backend} {s.precision}" for s in summary))
    fig = new_figure((PLOT_SIZE[0], bars_height(len(labels), len(report.rows), minimum=PLOT_SIZE[1])))
    ax_acc, ax_tput = fig.subplots(1, 2, width_ratios=(1, 2.2))
    names = [f"{r.model.split('/')[-1]}\n{'original' if r.fold == 1 else f'folded f={r.fold}'}" for r in report.rows]
    colours = ("tab:blue", "tab:orange")
    ax_acc.bar_label(ax_acc.bar(names, [r.top1 for r in report.rows], color=colours), fmt="%.1f", fontsize=8)
    ax_acc.set_ylabel("test Top-1 (%)")
    ax_acc.set_ylim(0, 112)  # room for the value above a bar at 100 %
    ax_acc.tick_params(axis="x", labelsize=8)
    ax_acc.set_title("accuracy", fontsize=10)
    series = [("original" if row.fold == 1 else f"folded f={row.fold}",
               [next((s.throughput for s in summary if f"{s.backend} {s.precision}" == label and s.fold == row.fold),
                     None) for label in labels], colour) for row, colour in zip(report.rows, colours, strict=True)]
    grouped_barh(ax_tput, labels, series)
    ax_tput.set_xlabel("images/s (median over trials)")
    ax_tput.set_title(f"throughput on {report.device}, batch {report.settings.bench_batch}", fontsize=10)
    fig.legend(*ax_tput.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(f"{report.task}: original CNN vs FoldedCNN (f={report.fold})", fontsize=10)
    return fig


def plot_demo(report: DemoReport, run: BenchRun, path: Path) -> Path:
    """:func:`demo_figure` written as a PNG at ``path``."""
    return save_figure(demo_figure(report, run), path, dpi=PLOT_DPI)


def render_markdown(report: DemoReport, run: BenchRun) -> str:
    """``report.md``: the table, what was run, every backend's medians, and the files."""
    s = report.settings
    per_backend = [[r.model.split("/")[-1], "original" if r.fold == 1 else f"folded f={r.fold}", r.backend,
                    r.precision, f"{r.throughput:,.0f}", f"{100 * r.spread:.1f}%", f"{r.flops_per_sec / GIGA:.2f}",
                    format_utilization(r.utilization)] for r in summarize(run.records)]
    notes = utilization_footnotes((r.utilization for r in report.rows), markdown=True)
    backend_notes = utilization_footnotes((r.utilization for r in summarize(run.records)), markdown=True)
    lines = [
        f"# FoldedCNNs demo: {report.task}, fold {report.fold}",
        "",
        markdown_table(TABLE_HEADERS, table_rows(report)),
        "",
        f"{report.verdict}. Each model is shown at its own best engine (backend and precision, the last "
        "column); speedup is the FoldedCNN's throughput there over the original's at its best (median of "
        "per-trial ratios). 'Top-1 %' is the fp32 model's; 'on best engine' is the same checkpoint run by "
        "that engine (int8: calibrated on training images). GFLOP/s is the model's FLOPs per image times "
        "images/s (integer GOP/s for int8); utilization is that over the measured dense-matmul peak of the "
        "same precision (the best dense kernel of the engines present).",
        *(["", *notes] if notes else []),
        "",
        f"![accuracy and throughput]({PLOT_PNG})",
        "",
        "## What ran",
        "",
        f"- data: synthetic {report.task} crops, {s.per_class} per class "
        f"({', '.join(f'{k} {v}' for k, v in report.images.items())} images), in `{DATA_DIR}/`",
        f"- training: recipe `{TRAIN_RECIPE}` on {report.device}, the original CNN for {s.original_epochs} epochs and "
        f"the FoldedCNN for {s.epochs}; the FoldedCNN "
        f"starts with {s.slot_warmup} epochs of tied per-image slots (`--slot-warmup`); "
        "best checkpoint by validation Top-1",
        f"- benchmark: batch {s.bench_batch} images, {s.bench_trials} interleaved trials of {s.bench_seconds} s per "
        f"configuration, backends {', '.join(report.backends)}, precisions "
        f"{', '.join(demo_precisions(report.device, s))}",
        f"- machine: {report.machine.get('cpu') or platform.processor() or platform.machine()}, "
        f"torch {report.machine.get('torch', '?')}",
        f"- time: {', '.join(f'{k} {v:.0f} s' for k, v in report.phase_seconds.items())}",
        "",
        "## Every backend (medians over trials)",
        "",
        markdown_table(("model", "mode", "backend", "precision", "images/s", "spread", "GFLOP/s", "utilization"),
                       per_backend),
        *(["", *backend_notes] if backend_notes else []),
    ]
    if report.notices:
        lines += ["", "Notes: " + "; ".join(report.notices)]
    lines += ["", "## Files", ""] + [f"- `{name}`: {what}" for name, what in (
        (BENCH_CSV, "every timing (the original's CSV columns plus backend, precision, device, utilization)"),
        (PLOT_PNG, "the figure above"), (REPORT_JSON, "everything in this report as JSON"),
        (f"{RUNS_DIR}/", "training runs with best.pt / last.pt and per-epoch metrics"))]
    return "\n".join(lines) + "\n"


def run_demo(out: str | Path = "demo_out", *, task: str | Path = DEFAULT_TASK, fold: int = DEFAULT_FOLD,
             quick: bool = False, device: str = "cpu", seed: int = 0, progress: bool = False,
             settings: DemoSettings | None = None, on_phase: Callable[[str], None] | None = None) -> DemoReport:
    """Run the whole demo into ``out``; see the module docstring. ``settings`` overrides FULL/QUICK."""
    spec = get_task(task)
    if spec.family != "game":
        raise ConfigError(f"the demo draws synthetic game-screen crops; {task} is a {spec.family} task, "
                          "pick a game task such as lol/goldnumber-fraction (see 'foldedcnns models')")
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 2:
        raise ConfigError(f"--fold must be an integer >= 2 (the FoldedCNN next to the original), got {fold!r}")
    settings = settings or (QUICK if quick else FULL)
    out = claim_output(Path(out))
    say = on_phase or (lambda _text: None)
    phases: dict[str, float] = {}

    def timed(name: str, text: str, work: Callable[[], Any]) -> Any:
        say(text)
        started = time.perf_counter()
        value = work()
        phases[name] = time.perf_counter() - started
        return value

    images = timed("data", f"drawing synthetic {task} data ({settings.per_class} per class)",
                   lambda: _synthetic_data(spec, out / DATA_DIR, settings, seed, progress))
    results: list[TrainResult] = []
    for f, name in ((1, ORIGINAL_RUN), (fold, f"folded-f{fold}")):
        run_dir = _fresh_run_dir(out / RUNS_DIR / name)
        epochs = settings.original_epochs if f == 1 else settings.epochs
        config = TrainConfig(task=str(task), data=out / DATA_DIR, out=run_dir, fold=f, recipe=TRAIN_RECIPE,
                             epochs=epochs, slot_warmup=settings.slot_warmup, device=device, seed=seed,
                             progress=progress)
        results.append(timed(f"train f={f}", f"training the {'original CNN' if f == 1 else f'FoldedCNN (f={f})'} "
                             f"for {epochs} epochs", lambda config=config: train(config)))
    scores = timed("evaluate", "evaluating both on the test split",
                   lambda: [evaluate(r.best_checkpoint, out / DATA_DIR, "test", engine=Engine(device=device))
                            for r in results])
    checkpoints = [r.best_checkpoint for r in results]
    precisions = demo_precisions(device, settings)
    calibration = load_calibration(out / DATA_DIR, spec) if any(is_quantized(p) for p in precisions) else None
    run, backends = timed("benchmark", "benchmarking both on every available backend and precision",
                          lambda: _benchmark(checkpoints, device, settings, precisions, calibration, progress))
    best = best_configs(run.records)
    rows = []
    for result, score, (mode, f) in zip(results, scores, (("Original", 1), ("Folded", fold)), strict=True):
        b = _best(best, mode, f)
        on_engine = timed(f"evaluate f={f} on {b.backend} {b.precision}", "evaluating the best engine's Top-1",
                          lambda b=b, result=result: evaluate(
                              result.best_checkpoint, out / DATA_DIR, "test", batch_size=b.images,
                              engine=Engine(b.backend, b.precision, device, calibration=calibration)))
        rows.append(DemoRow(spec.name, f, float(score["top1"]), float(score["top5"]), float(on_engine["top1"]),
                            b.throughput, 1.0 if f == 1 else b.speedup, b.flops_per_sec, b.utilization,
                            f"{b.backend} {b.precision}", str(result.best_checkpoint), result.seconds))
    files = {"bench_csv": str(out / BENCH_CSV), "plot": str(out / PLOT_PNG), "report": str(out / REPORT_MD),
             "json": str(out / REPORT_JSON), "data": str(out / DATA_DIR), "runs": str(out / RUNS_DIR)}
    report = DemoReport(spec.name, fold, quick, device, settings, images, rows, backends, run.notices, phases,
                        files, run.machine)
    write_csv(out / BENCH_CSV, run.records)
    plot_demo(report, run, out / PLOT_PNG)
    atomic_write_text(out / REPORT_MD, render_markdown(report, run))
    atomic_write_text(out / REPORT_JSON, json.dumps(report.to_dict(), indent=1) + "\n")
    return report
