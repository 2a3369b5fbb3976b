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
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from foldedcnns.analysis import flops_per_image
from foldedcnns.benchmark.grid import (
    Candidate,
    ModelEntry,
    checkpoint_entry,
    default_tasks,
    grid,
    is_checkpoint,
    model_entries,
)
from foldedcnns.benchmark.machine import machine_info
from foldedcnns.benchmark.peak import DEFAULT_SECONDS as PEAK_SECONDS
from foldedcnns.benchmark.peak import Peak, measure_peak
from foldedcnns.benchmark.records import BenchRecord, add_ratios, flops_per_sec, utilization
from foldedcnns.benchmark.timing import check_budget, time_calls
from foldedcnns.data.calibration import Calibration
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import BackendUnavailable, Prepared, calibration_notice, get_backend, precision_dtype
from foldedcnns.runtime.device import resolve_device
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import check_threads, torch_threads

# the model grid lives in grid.py; these names stay importable from the runner, where scripts find them
__all__ = ["DEFAULT_BATCH_SIZES", "DEFAULT_FOLDS", "DEFAULT_TIMED_SECONDS", "DEFAULT_TRIALS", "DEFAULT_WARMUP",
           "BenchConfig", "BenchRun", "Candidate", "ModelEntry", "PreparedCache", "add_utilization", "best_peaks",
           "checkpoint_entry", "default_tasks", "fixed_inputs", "folded_view", "grid", "is_checkpoint", "measure",
           "measure_peaks", "model_entries", "run_benchmark"]

DEFAULT_FOLDS: tuple[int, ...] = (1, 2, 3, 4)
DEFAULT_BATCH_SIZES: tuple[int, ...] = (1024,)
DEFAULT_WARMUP = 3
DEFAULT_TIMED_SECONDS = 1.0  # timed phase per configuration and trial (the peak has its own budget)
DEFAULT_TRIALS = 3
CHECK_INPUTS = 2  # folded inputs in the one check call of a shape-independent backend


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
    seconds: float | None = DEFAULT_TIMED_SECONDS
    trials: int = DEFAULT_TRIALS
    threads: int | None = None
    seed: int = 0
    peak_seconds: float = PEAK_SECONDS  # 0 skips the peak measurement (Utilization left empty)
    calibration: Calibration | None = None  # int8's images (None: seeded random input, throughput only)

    def engine(self) -> Engine:
        """The engine every candidate shares (device, threads, calibration); backend and precision vary."""
        return Engine(device=self.device, threads=self.threads, calibration=self.calibration)

    def validate(self) -> None:
        if not self.tasks:
            raise ConfigError("no tasks given; name at least one task (see 'foldedcnns models')")
        for what, values in (("folds", self.folds), ("batch sizes", self.batch_sizes)):
            if not values or min(values) < 1:
                raise ConfigError(f"{what} must be a non-empty list of integers >= 1, got {list(values)}")
        if self.trials < 1:
            raise ConfigError(f"trials must be >= 1, got {self.trials}")
        check_threads(self.threads)
        check_budget(self.iterations, self.seconds, self.warmup)
        if not 0 <= self.peak_seconds < math.inf:  # also NaN
            raise ConfigError(f"--peak-seconds must be a finite number >= 0, got {self.peak_seconds}")
        for name in self.backends:
            get_backend(name)
        for precision in self.precisions:
            precision_dtype(precision)
        resolve_device(self.device)


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


class PreparedCache:
    """Prepares each (model, backend, precision[, batch]) once and remembers failures as notices.

    Each candidate runs on ``engine`` with the candidate's backend and precision (the device, threads
    and int8 calibration are ``engine``'s); whether a (backend, precision) runs here at all is asked of
    the registered backend once, with one notice.
    """

    def __init__(self, engine: Engine, on_notice: Callable[[str], None] | None = None) -> None:
        self.base = engine.resolved()
        self.device = torch.device(self.base.device)
        self.notices: list[str] = []
        self._on_notice = on_notice
        self._prepared: dict[tuple[Any, ...], Prepared | None] = {}
        self._models: dict[tuple[Any, ...], nn.Module] = {}

    def notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
            if self._on_notice is not None:
                self._on_notice(text)

    def engine(self, c: Candidate) -> Engine:
        """The engine ``c`` runs on: its backend and precision with this cache's device, threads and calibration."""
        return self.base.replace(backend=c.backend, precision=c.precision)

    def _key(self, c: Candidate) -> tuple[Any, ...]:
        shape = c.folded_inputs if get_backend(c.backend).static_shapes else None
        return (c.entry.key, c.backend, c.precision, shape)

    def available(self, backend_name: str, precision: str) -> bool:
        ok, reason = get_backend(backend_name).is_available(self.device, precision)
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
            engine = self.engine(c)
            model = self._models.get(c.entry.key)
            if model is None:
                model = self._models[c.entry.key] = c.entry.build()
            rows = c.folded_inputs if key[3] is not None else min(CHECK_INPUTS, c.folded_inputs)
            example = torch.rand(rows, *c.entry.config.input_shape, generator=torch.Generator().manual_seed(0))
            try:
                prepared = engine.runner.prepare(model, example, engine)
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
    return {p: measure_peak(Engine(precision=p, device=str(device)), seconds=seconds)
            for p in dict.fromkeys(precisions)}


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


def run_benchmark(config: BenchConfig, *, progress: bool = False, on_notice: Callable[[str], None] | None = None,
                  peaks: Mapping[str, Peak] | None = None) -> BenchRun:
    """Measure every configuration of ``config``; see the module docstring for the protocol.

    The peak of each precision is sampled before the first trial and after every trial, and the
    best sample is the ceiling for Utilization. Backends come from the registry
    (:func:`foldedcnns.runtime.backends.register_backend`); int8 is calibrated on ``config.calibration``.
    ``peaks`` gives the peaks instead of measuring them; ``on_notice`` is called with each one-line
    skip notice as it happens.
    """
    config.validate()
    device = resolve_device(config.device)
    with torch_threads(config.threads):
        entries = model_entries(config.tasks, config.folds, config.seed)
        candidates = grid(entries, config.batch_sizes, config.backends, config.precisions)
        cache = PreparedCache(config.engine(), on_notice)
        int8_notice = calibration_notice(config.precisions, config.calibration)
        if int8_notice is not None:
            cache.notice(int8_notice)  # first: what every int8 figure below was calibrated on
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
