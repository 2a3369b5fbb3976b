"""Run a benchmark: models x batch sizes x backends x precisions, interleaved over trials.

Protocol (the original's, section 5 of the reference, on any backend): the batch size counts images,
a folded model at batch ``B`` runs ``ceil(B/f)`` folded inputs; every configuration is timed on one
fixed random input after a warm-up, with the device synchronized at both ends of the timed phase;
throughput is images/s and FLOPs/sec is per-image FLOPs (:func:`foldedcnns.analysis.flops_per_image`)
times throughput.

Interleaving: all one-off work (casting, export, compilation, CUDA-graph capture) happens before
the first trial. Each trial then times every configuration once, in an order where each Original
sits next to its folded models (original, f=2, f=3, f=4, then the next backend or precision ...),
so slow drift of the machine (other jobs, clocks, heat) hits originals and folded models alike.
Every timed block has its own warm-up. Summaries report medians over trials.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from foldedcnns.analysis import flops_per_image
from foldedcnns.benchmark.machine import machine_info
from foldedcnns.benchmark.peak import DEFAULT_SECONDS as PEAK_SECONDS
from foldedcnns.benchmark.peak import Peak, measure_peak
from foldedcnns.benchmark.records import BenchRecord, add_ratios, flops_per_sec, utilization
from foldedcnns.benchmark.timing import check_budget, folded_inputs, images_per_call, time_calls
from foldedcnns.errors import ConfigError
from foldedcnns.models import build_model, get_task, list_models
from foldedcnns.models.registry import COMPOUND_PREFIX, ModelConfig
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.backends import (
    BACKENDS,
    Backend,
    BackendUnavailable,
    Prepared,
    get_backend,
    precision_dtype,
)
from foldedcnns.runtime.checkpoint import model_from_checkpoint
from foldedcnns.runtime.device import resolve_device
from foldedcnns.runtime.threads import torch_threads

DEFAULT_FOLDS: tuple[int, ...] = (1, 2, 3, 4)
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1024,)
DEFAULT_WARMUP = 3
DEFAULT_SECONDS = 1.0
DEFAULT_TRIALS = 3
CHECK_INPUTS = 2  # folded inputs in the one check call of a shape-independent backend
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
MODE_ORDER = {"Original": 0, "Folded": 1, "Compound": 2}
BENCH_FAMILIES = ("game", "noscope")  # the paper's benchmark set


def default_tasks() -> list[str]:
    """Every game and NoScope task: the one default task list of bench, the headline and the GPU check."""
    return [n for n in list_models(compound=False) if get_task(n).family in BENCH_FAMILIES]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. Exactly one of ``iterations`` and ``seconds`` sets the timed phase."""

    tasks: tuple[str, ...]
    folds: tuple[int, ...] = DEFAULT_FOLDS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    backends: tuple[str, ...] = ("eager",)
    precisions: tuple[str, ...] = ("fp32",)
    device: str = "cpu"
    warmup: int = DEFAULT_WARMUP
    iterations: int | None = None
    seconds: float | None = DEFAULT_SECONDS
    trials: int = DEFAULT_TRIALS
    threads: int | None = None
    seed: int = 0
    peak_seconds: float = PEAK_SECONDS  # 0 skips the peak measurement (Utilization left empty)

    def validate(self, registry: Mapping[str, Backend] | None = None) -> None:
        if not self.tasks:
            raise ConfigError("no tasks given; name at least one task (see 'foldedcnns models')")
        for what, values in (("folds", self.folds), ("batch sizes", self.batch_sizes)):
            if not values or min(values) < 1:
                raise ConfigError(f"{what} must be a non-empty list of integers >= 1, got {list(values)}")
        if self.trials < 1:
            raise ConfigError(f"trials must be >= 1, got {self.trials}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        check_budget(self.iterations, self.seconds, self.warmup)
        if not 0 <= self.peak_seconds < math.inf:  # also NaN
            raise ConfigError(f"--peak-seconds must be a finite number >= 0, got {self.peak_seconds}")
        for name in self.backends:
            get_backend(name, registry)
        for precision in self.precisions:
            precision_dtype(precision)
        resolve_device(self.device)


@dataclass(frozen=True)
class ModelEntry:
    """One model to time: what it is and how to build it (weights do not change the timing)."""

    config: ModelConfig
    build: Callable[[], nn.Module] = field(compare=False, repr=False)
    label: str = ""
    trained: bool = False  # a checkpoint's own weights (accuracy means something), not a seeded random init

    @property
    def model(self) -> str:
        """The CSV's Model column: the task name (compound baselines share their task's name)."""
        return self.config.task.name

    @property
    def key(self) -> tuple[str, str, int, float]:
        return (self.config.task.name, self.config.mode, self.config.fold, round(self.config.multiplier, 6))

    @property
    def title(self) -> str:
        return self.label or f"{self.config.name} f={self.config.fold}"


@dataclass(frozen=True)
class Candidate:
    """One configuration: a model at a nominal batch size on one backend and precision."""

    entry: ModelEntry
    backend: str
    precision: str
    batch_size: int

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.entry.key, self.backend, self.precision, self.batch_size)

    @property
    def images(self) -> int:
        return images_per_call(self.batch_size, self.entry.config.fold)

    @property
    def folded_inputs(self) -> int:
        return folded_inputs(self.batch_size, self.entry.config.fold)

    def describe(self) -> str:
        return f"{self.entry.title} {self.backend} {self.precision} B={self.batch_size}"


@dataclass
class BenchRun:
    """Records of a run plus what was skipped, the peaks used and the machine."""

    records: list[BenchRecord]
    notices: list[str]
    peaks: dict[str, Peak]
    machine: dict[str, Any]
    config: BenchConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"records": [asdict(r) for r in self.records], "notices": list(self.notices),
                "peaks": {k: p.to_dict() for k, p in self.peaks.items()}, "machine": self.machine}


def _build(task: str | TaskSpec, fold: int, seed: int) -> Callable[[], nn.Module]:
    """A builder of the task's model at ``fold`` with seeded weights (the caller's RNG is left alone)."""

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(task, fold=fold).eval()

    return build


def is_checkpoint(task: str) -> bool:
    """Whether a model argument names a checkpoint file (by its suffix) rather than a task."""
    return Path(task).suffix in CHECKPOINT_SUFFIXES


def checkpoint_entry(path: str | Path) -> ModelEntry:
    """A checkpoint's model (its own fold and multiplier) as a benchmark entry."""
    model, config = model_from_checkpoint(path)
    return ModelEntry(config, lambda: model, label=f"{Path(path).name} f={config.fold}", trained=True)


def model_entries(tasks: Sequence[str], folds: Sequence[int], seed: int = 0) -> list[ModelEntry]:
    """Every model to time: each task at each fold; ``compound/<task>`` adds the compound baseline and
    its task's Original; a checkpoint file adds its own model and its task's Original (fold 1).
    Duplicates are dropped; order is task by task (as given), Original first, then by fold."""
    entries: dict[tuple[str, str, int, float], tuple[int, ModelEntry]] = {}

    def add(order: int, entry: ModelEntry) -> None:
        entries.setdefault(entry.key, (order, entry))

    for order, task in enumerate(tasks):
        if is_checkpoint(task):
            ckpt = checkpoint_entry(task)
            add(order, ckpt)  # first, so a fold-1 checkpoint keeps its own weights
            spec = ckpt.config.task
            add(order, ModelEntry(build_model(spec, init=False).config, _build(spec, 1, seed)))
        elif task.startswith(COMPOUND_PREFIX):
            base = task[len(COMPOUND_PREFIX):]
            add(order, ModelEntry(build_model(base, init=False).config, _build(base, 1, seed)))
            add(order, ModelEntry(build_model(task, init=False).config, _build(task, 1, seed)))
        else:
            for f in folds:
                add(order, ModelEntry(build_model(task, fold=f, init=False).config, _build(task, f, seed)))
    ranked = sorted(entries.values(), key=lambda oe: (oe[0], MODE_ORDER.get(oe[1].config.mode, 9), oe[1].config.fold))
    return [entry for _, entry in ranked]


def grid(entries: Sequence[ModelEntry], batch_sizes: Sequence[int], backends: Sequence[str],
         precisions: Sequence[str]) -> list[Candidate]:
    """All configurations in interleaved order: per task and batch size, per backend and precision,
    the Original then its folded (and compound) models."""
    by_task: dict[str, list[ModelEntry]] = {}
    for entry in entries:
        by_task.setdefault(entry.model, []).append(entry)
    out = []
    for task_entries in by_task.values():
        for batch in batch_sizes:
            for backend in backends:
                for precision in precisions:
                    out += [Candidate(e, backend, precision, batch) for e in task_entries]
    return out


class PreparedCache:
    """Prepares each (model, backend, precision[, batch]) once and remembers failures as notices."""

    def __init__(self, device: torch.device, registry: Mapping[str, Backend] | None = None,
                 on_notice: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.registry = BACKENDS if registry is None else registry
        self.notices: list[str] = []
        self._on_notice = on_notice
        self._prepared: dict[tuple[Any, ...], Prepared | None] = {}
        self._models: dict[tuple[Any, ...], nn.Module] = {}

    def notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
            if self._on_notice is not None:
                self._on_notice(text)

    def _key(self, c: Candidate) -> tuple[Any, ...]:
        backend = get_backend(c.backend, self.registry)
        shape = c.folded_inputs if backend.static_shapes else None
        return (c.entry.key, c.backend, c.precision, shape)

    def available(self, backend_name: str, precision: str) -> bool:
        ok, reason = get_backend(backend_name, self.registry).is_available(self.device, precision)
        if not ok:
            self.notice(f"skipped {backend_name} {precision} on {self.device.type}: {reason}")
        return ok

    def get(self, c: Candidate) -> Prepared | None:
        """The prepared runner, or ``None`` (with a notice) when it cannot run here."""
        key = self._key(c)
        if key in self._prepared:
            return self._prepared[key]
        prepared = None
        if self.available(c.backend, c.precision):
            backend = get_backend(c.backend, self.registry)
            model = self._models.get(c.entry.key)
            if model is None:
                model = self._models[c.entry.key] = c.entry.build()
            rows = c.folded_inputs if key[3] is not None else min(CHECK_INPUTS, c.folded_inputs)
            example = torch.rand(rows, *c.entry.config.input_shape, generator=torch.Generator().manual_seed(0))
            try:
                prepared = backend.prepare(model, example, precision=c.precision, device=self.device)
            except BackendUnavailable as exc:
                self.notice(f"skipped {c.backend} {c.precision} for {c.entry.title}: {exc}")
        self._prepared[key] = prepared
        return prepared


def fixed_inputs(candidates: Sequence[Candidate], seed: int) -> dict[tuple[int, int, int], torch.Tensor]:
    """One fixed random image batch per image size, large enough for every candidate (uniform [0, 1))."""
    need: dict[tuple[int, int, int], int] = {}
    for c in candidates:
        size = c.entry.config.image_size
        need[size] = max(need.get(size, 0), c.images)
    generator = torch.Generator().manual_seed(seed)
    return {size: torch.rand(n, *size, generator=generator) for size, n in sorted(need.items())}


def folded_view(images: torch.Tensor, c: Candidate) -> torch.Tensor:
    """The first ``c.images`` images folded into ``(ceil(B/f), f*C, H, W)`` (a view, no copy)."""
    n, (ch, h, w) = c.images, c.entry.config.image_size
    return images[:n].reshape(c.folded_inputs, c.entry.config.fold * ch, h, w)


def measure_peaks(precisions: Sequence[str], device: torch.device, seconds: float) -> dict[str, Peak]:
    """Peak per precision (empty when ``seconds`` is 0)."""
    if seconds <= 0:
        return {}
    return {p: measure_peak(device, p, seconds=seconds) for p in dict.fromkeys(precisions)}


def best_peaks(*samples: Mapping[str, Peak]) -> dict[str, Peak]:
    """The highest sample per precision: other work on the machine only ever lowers a sample."""
    out: dict[str, Peak] = {}
    for sample in samples:
        for precision, peak in sample.items():
            if precision not in out or peak.flops_per_sec > out[precision].flops_per_sec:
                out[precision] = peak
    return out


def add_utilization(records: Sequence[BenchRecord], peaks: Mapping[str, Peak]) -> list[BenchRecord]:
    """Fill ``utilization`` = FLOPs/sec / peak of the record's precision (``None`` without a peak)."""
    return [replace(r, utilization=utilization(r.flops_per_sec, peaks[r.precision].flops_per_sec
                                               if r.precision in peaks else None)) for r in records]


def measure(candidates: Sequence[Candidate], cache: PreparedCache, *, trials: int, warmup: int,
            iterations: int | None = None, seconds: float | None = None, seed: int = 0, progress: bool = False,
            desc: str = "bench", after_trial: Callable[[int], None] | None = None) -> list[BenchRecord]:
    """Time ``candidates`` in the given order, once per trial, and return one record per timing.

    Candidates that cannot be prepared are left out (their notice is in ``cache.notices``). Ratios
    (TputNorm, FLOPNorm) are filled against the Original rows present; ``utilization`` is left to
    :func:`add_utilization`. ``after_trial(trial)`` runs between trials (e.g. a peak sample).
    """
    check_budget(iterations, seconds, warmup)
    runnable = [(c, p) for c in candidates if (p := cache.get(c)) is not None]
    inputs = fixed_inputs([c for c, _ in runnable], seed)
    per_image = {c.entry.key: flops_per_image(c.entry.config) for c, _ in runnable}
    records = []
    device = str(cache.device)
    bar = tqdm(total=trials * len(runnable), desc=desc, unit="cfg", disable=not progress, leave=False)
    with bar:
        for trial in range(1, trials + 1):
            for c, prepared in runnable:
                x = prepared.prepare_input(folded_view(inputs[c.entry.config.image_size], c))
                timing = time_calls(prepared.run, x, c.images, warmup=warmup, iterations=iterations,
                                    seconds=seconds, synchronize=prepared.synchronize)
                del x
                records.append(BenchRecord(
                    model=c.entry.model, trial=trial, batch_size=c.batch_size, mode=c.entry.config.mode,
                    fold=c.entry.config.fold, throughput=timing.throughput,
                    flops_per_sec=flops_per_sec(per_image[c.entry.key], timing.throughput),
                    backend=c.backend, precision=c.precision, device=device, images=c.images,
                    flops_per_image=per_image[c.entry.key], calls=timing.calls, seconds=timing.seconds))
                bar.update()
            if after_trial is not None:
                after_trial(trial)
    return add_ratios(records)


def run_benchmark(config: BenchConfig, *, registry: Mapping[str, Backend] | None = None, progress: bool = False,
                  on_notice: Callable[[str], None] | None = None,
                  peaks: Mapping[str, Peak] | None = None) -> BenchRun:
    """Measure every configuration of ``config``; see the module docstring for the protocol.

    The peak of each precision is sampled before the first trial and after every trial, and the
    best sample is the ceiling for Utilization. ``registry`` replaces the backend table (tests use
    stub backends); ``peaks`` gives the peaks instead of measuring them; ``on_notice`` is called with
    each one-line skip notice as it happens.
    """
    config.validate(registry)
    device = resolve_device(config.device)
    with torch_threads(config.threads):
        entries = model_entries(config.tasks, config.folds, config.seed)
        candidates = grid(entries, config.batch_sizes, config.backends, config.precisions)
        cache = PreparedCache(device, registry, on_notice)
        setup = tqdm(candidates, desc="preparing", unit="cfg", disable=not progress, leave=False)
        runnable = [c for c in setup if cache.get(c) is not None]
        precisions = list(dict.fromkeys(c.precision for c in runnable))
        samples: list[dict[str, Peak]] = [dict(peaks)] if peaks is not None else []

        def sample_peak(_trial: int = 0) -> None:
            if peaks is None:
                samples.append(measure_peaks(precisions, device, config.peak_seconds))

        sample_peak()
        records = measure(runnable, cache, trials=config.trials, warmup=config.warmup,
                          iterations=config.iterations, seconds=config.seconds, seed=config.seed,
                          progress=progress, after_trial=sample_peak)
        final_peaks = best_peaks(*samples)
        return BenchRun(add_utilization(records, final_peaks), cache.notices, final_peaks,
                        machine_info(str(device)), config)

