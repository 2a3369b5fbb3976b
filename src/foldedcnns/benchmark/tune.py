"""Search the fastest way to run a task (or a trained checkpoint) on this machine: the speed search.

The search has three stages, all with the benchmark's protocol (:mod:`foldedcnns.benchmark.runner`):

1. **screen**: every fold x backend x precision at one batch size, one short timing each (or the best
   of ``screen_trials`` interleaved repeats);
2. **batch**: the ``top_k`` backend/precision pairs of each fold at every other batch size;
3. **final**: the winner of each fold, plus the Original at each folded winner's backend, precision
   and batch size, timed again in interleaved trials. Only this stage's medians are reported, so
   the lucky draw that won a noisy screening round does not inflate the result.

A checkpoint keeps its own fold (its weights are for that fold); the task's untrained Original is
timed beside it for the speedup. The whole ``tune`` (this search plus the accuracy cost of reduced
precision on a data set's test split, measured by training's evaluation loop) is
:func:`foldedcnns.workflows.tune.tune`; this module holds its settings, its result and the search.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from foldedcnns.benchmark.grid import Candidate, ModelEntry, is_checkpoint, model_entries
from foldedcnns.benchmark.machine import machine_info
from foldedcnns.benchmark.peak import DEFAULT_SECONDS as PEAK_SECONDS
from foldedcnns.benchmark.peak import Peak
from foldedcnns.benchmark.records import BenchRecord
from foldedcnns.benchmark.runner import DEFAULT_FOLDS, PreparedCache, add_utilization, best_peaks, measure
from foldedcnns.benchmark.summary import BestRow, best_configs
from foldedcnns.data.calibration import Calibration
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import calibration_notice
from foldedcnns.runtime.device import resolve_device
from foldedcnns.runtime.engine import Engine, default_backends

TUNE_BATCH_SIZES: tuple[int, ...] = (256, 1024, 4096)
TUNE_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEFAULT_TOP_K = 2
SCREEN_SECONDS = 0.5
SCREEN_WARMUP = 1
FINAL_SECONDS = 1.0
FINAL_WARMUP = 2
FINAL_TRIALS = 3


@dataclass(frozen=True)
class TuneConfig:
    """What to search. ``backends`` defaults to the device's list; ``exclude`` leaves out (backend,
    precision) pairs, e.g. ``(("compile", "fp16"),)`` to save its compilations. ``data`` (a checkpoint's
    data set, ``DIR/test/<class>/<image>``) adds the accuracy cost of each reduced precision; int8 is
    calibrated on ``calibration``, else (in :func:`foldedcnns.workflows.tune.tune`) on up to 300 seeded
    images of ``data``'s train (else val) split, else on random input (throughput only, with a notice)."""

    target: str
    folds: tuple[int, ...] = DEFAULT_FOLDS
    backends: tuple[str, ...] | None = None
    precisions: tuple[str, ...] = TUNE_PRECISIONS
    batch_sizes: tuple[int, ...] = TUNE_BATCH_SIZES
    device: str = "cpu"
    screen_batch: int | None = None  # default: the middle batch size
    top_k: int = DEFAULT_TOP_K
    screen_seconds: float = SCREEN_SECONDS
    screen_warmup: int = SCREEN_WARMUP
    screen_trials: int = 1  # >1: interleaved repeats, ranked by the best one (load only ever slows a run)
    final_seconds: float = FINAL_SECONDS
    final_warmup: int = FINAL_WARMUP
    trials: int = FINAL_TRIALS
    peak_seconds: float = PEAK_SECONDS
    threads: int | None = None
    data: str | None = None
    max_accuracy_drop: float | None = None  # in accuracy points (0.01 = 1 %)
    max_call_seconds: float | None = None  # skip batch sizes whose one call would take longer (estimated)
    seed: int = 0
    exclude: tuple[tuple[str, str], ...] = ()
    calibration: Calibration | None = None

    def resolved_backends(self) -> tuple[str, ...]:
        return self.backends if self.backends is not None else default_backends(self.device)

    def resolved_screen_batch(self) -> int:
        if self.screen_batch is not None:
            return self.screen_batch
        ordered = sorted(self.batch_sizes)
        return ordered[len(ordered) // 2]

    def validate(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1 or not self.folds or min(self.folds) < 1:
            raise ConfigError("batch sizes and folds must be non-empty lists of integers >= 1")
        if self.top_k < 1 or self.trials < 1 or self.screen_trials < 1:
            raise ConfigError(f"top-k and trials must be >= 1, got top-k {self.top_k}, trials {self.trials}, "
                              f"screening trials {self.screen_trials}")
        for flag, value in (("--screen-seconds", self.screen_seconds), ("--seconds", self.final_seconds)):
            if not 0 < value < math.inf:  # also NaN: a time budget must end
                raise ConfigError(f"{flag} must be a finite number > 0, got {value}")
        if not 0 <= self.peak_seconds < math.inf:
            raise ConfigError(f"--peak-seconds must be a finite number >= 0, got {self.peak_seconds}")
        if self.data is not None and not is_checkpoint(self.target):
            raise ConfigError("measuring the accuracy cost needs trained weights; pass a checkpoint instead of "
                              f"the task name {self.target!r}, or drop --data")
        resolve_device(self.device)


@dataclass(frozen=True)
class PrecisionCost:
    """Accuracy of one (backend, precision) against fp32 eager on the test images."""

    backend: str
    precision: str
    images: int
    accuracy: float
    fp32_accuracy: float
    agreement: float  # fraction of images with the same predicted class as fp32

    @property
    def accuracy_drop(self) -> float:
        return self.fp32_accuracy - self.accuracy


@dataclass
class TuneResult:
    """Every stage's records, the final best configurations and the recommendation."""

    target: str
    screen: list[BenchRecord]
    final: list[BenchRecord]
    best: list[BestRow]
    recommended: BestRow | None
    costs: list[PrecisionCost] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    peaks: dict[str, Peak] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "recommended": self.recommended.to_dict() if self.recommended else None,
                "best": [b.to_dict() for b in self.best],
                "accuracy": [{**asdict(c), "accuracy_drop": c.accuracy_drop} for c in self.costs],
                "notices": self.notices, "peaks": {k: p.to_dict() for k, p in self.peaks.items()},
                "machine": self.machine}


def tune_entries(config: TuneConfig) -> list[ModelEntry]:
    if is_checkpoint(config.target):
        return model_entries([config.target], (1,), config.seed)
    return model_entries([config.target], config.folds, config.seed)


def _fastest(records: Sequence[BenchRecord]) -> dict[tuple[Any, ...], BenchRecord]:
    """Per model entry (mode, fold): the fastest record (over configurations and screening repeats)."""
    best: dict[tuple[Any, ...], BenchRecord] = {}
    for r in records:
        key = (r.mode, r.fold)
        if key not in best or r.throughput > best[key].throughput:
            best[key] = r
    return best


def search(entries: Sequence[ModelEntry], cache: PreparedCache, config: TuneConfig, *, progress: bool = False,
           excluded: frozenset[tuple[str, str]] = frozenset()) -> tuple[list[BenchRecord], list[BenchRecord]]:
    """Stages 1-3 for ``entries``, leaving out ``config.exclude`` and ``excluded`` (backend, precision) pairs.

    Returns (screening records, final records).
    """
    backends, precisions = config.resolved_backends(), config.precisions
    excluded = excluded | frozenset(config.exclude)
    screen_batch = config.resolved_screen_batch()
    by_key = {(e.config.mode, e.config.fold): e for e in entries}
    stage1 = [Candidate(e, b, p, screen_batch) for b in backends for p in precisions for e in entries
              if (b, p) not in excluded]
    screen = measure(stage1, cache, trials=config.screen_trials, warmup=config.screen_warmup,
                     seconds=config.screen_seconds, seed=config.seed, progress=progress, desc="tune: screen")
    stage2 = []
    for e in entries:
        mine = sorted((r for r in screen if (r.mode, r.fold) == (e.config.mode, e.config.fold)),
                      key=lambda r: -r.throughput)
        pairs = {(r.backend, r.precision): r for r in reversed(mine)}  # the fastest repeat of each pair
        ranked = sorted(pairs.values(), key=lambda r: -r.throughput)
        for r in ranked[: config.top_k]:
            for bs in config.batch_sizes:
                candidate = Candidate(e, r.backend, r.precision, bs)
                estimate = candidate.images / r.throughput
                if bs == screen_batch:
                    continue
                if config.max_call_seconds is not None and estimate > config.max_call_seconds:
                    cache.notice(f"not measured: {candidate.describe()} (one call would take about {estimate:.0f} s, "
                                 f"over the {config.max_call_seconds:g} s limit)")
                    continue
                stage2.append(candidate)
    screen += measure(stage2, cache, trials=config.screen_trials, warmup=config.screen_warmup,
                      seconds=config.screen_seconds, seed=config.seed, progress=progress, desc="tune: batch")
    winners = _fastest(screen)
    original = by_key.get(("Original", 1))
    final: list[Candidate] = []
    for key, r in sorted(winners.items(), key=lambda kv: (kv[0][0] != "Original", kv[0][1])):
        if original is not None and key != ("Original", 1):
            final.append(Candidate(original, r.backend, r.precision, r.batch_size))
        final.append(Candidate(by_key[key], r.backend, r.precision, r.batch_size))
    unique: dict[tuple[Any, ...], Candidate] = {}
    for c in final:
        unique.setdefault(c.key, c)
    final = list(unique.values())
    final_records = measure(final, cache, trials=config.trials, warmup=config.final_warmup,
                            seconds=config.final_seconds, seed=config.seed, progress=progress, desc="tune: final")
    return screen, final_records


def tune_cache(config: TuneConfig, device: torch.device, on_notice: Callable[[str], None] | None = None,
               ) -> PreparedCache:
    """The prepared runners of one tune (on ``config``'s threads and calibration), its int8 notice first."""
    cache = PreparedCache(Engine(device=str(device), threads=config.threads, calibration=config.calibration),
                          on_notice)
    int8_notice = calibration_notice(config.precisions, config.calibration)
    if int8_notice is not None:
        cache.notice(int8_notice)
    return cache


def tune_result(config: TuneConfig, screen: list[BenchRecord], final: list[BenchRecord], cache: PreparedCache,
                samples: Sequence[Mapping[str, Peak]], costs: Sequence[PrecisionCost] = ()) -> TuneResult:
    """The result of a search: Utilization against the best peak sample, each fold's best and the fastest."""
    final_peaks = best_peaks(*samples)
    final = add_utilization(final, final_peaks)
    best = best_configs(final)
    recommended = max(best, key=lambda b: b.throughput, default=None)
    return TuneResult(config.target, add_utilization(screen, final_peaks), final, best, recommended, list(costs),
                      cache.notices, final_peaks, machine_info(str(cache.device)))

