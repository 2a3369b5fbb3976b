"""Find the fastest way to run a task (or a trained checkpoint) on this machine.

The search has three stages, all with the benchmark's protocol (:mod:`foldedcnns.benchmark.runner`):

1. **screen**: every fold x backend x precision at one batch size, one short timing each (or the best
   of ``screen_trials`` interleaved repeats);
2. **batch**: the ``top_k`` backend/precision pairs of each fold at every other batch size;
3. **final**: the winner of each fold, plus the Original at each folded winner's backend, precision
   and batch size, timed again in interleaved trials. Only this stage's medians are reported, so
   the lucky draw that won a noisy screening round does not inflate the result.

A checkpoint keeps its own fold (its weights are for that fold); the task's untrained Original is
timed beside it for the speedup. With ``data`` (a folder with ``test/<class>/<image>``) and a
checkpoint, each reduced precision of the final winners is evaluated on the test images against
fp32: accuracy and agreement (same predicted class), so the speed of bf16/fp16/int8 is shown with its
accuracy cost; ``max_accuracy_drop`` excludes precisions that lose more than that.

``int8`` (``openvino``, ``onnxruntime``) is calibrated on up to 300 seeded images of ``data``'s train
(else val) split, so its accuracy is measured on test images it was not calibrated on; without
``data`` it is calibrated on random input and a notice says its accuracy is unknown (throughput only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from foldedcnns.benchmark.machine import machine_info
from foldedcnns.benchmark.peak import DEFAULT_SECONDS as PEAK_SECONDS
from foldedcnns.benchmark.peak import Peak
from foldedcnns.benchmark.records import BenchRecord
from foldedcnns.benchmark.runner import (
    Candidate,
    ModelEntry,
    PreparedCache,
    add_utilization,
    best_peaks,
    is_checkpoint,
    measure,
    measure_peaks,
    model_entries,
)
from foldedcnns.benchmark.summary import BestRow, best_configs
from foldedcnns.data.folder import ImageFolder
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import (
    BACKENDS,
    DEFAULT_BACKENDS,
    Backend,
    Prepared,
    calibrated_registry,
    calibration_notice,
    is_quantized,
    load_calibration,
)
from foldedcnns.runtime.device import resolve_device
from foldedcnns.data.model_input import to_model_input
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.core.folding import eval_order

TUNE_BATCH_SIZES: tuple[int, ...] = (256, 1024, 4096)
TUNE_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEFAULT_TOP_K = 2
SCREEN_SECONDS = 0.5
SCREEN_WARMUP = 1
FINAL_SECONDS = 1.0
FINAL_WARMUP = 2
FINAL_TRIALS = 3
TEST_SPLIT = "test"


@dataclass(frozen=True)
class TuneConfig:
    """What to search. ``backends`` defaults to the device's list; ``exclude`` leaves out (backend,
    precision) pairs, e.g. ``(("compile", "fp16"),)`` to save its compilations."""

    target: str
    folds: tuple[int, ...] = (1, 2, 3, 4)
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

    def resolved_backends(self) -> tuple[str, ...]:
        if self.backends is not None:
            return self.backends
        return DEFAULT_BACKENDS["cuda" if torch.device(self.device).type == "cuda" else "cpu"]

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


def tune(config: TuneConfig, *, registry: Mapping[str, Backend] | None = None, progress: bool = False,
         on_notice: Callable[[str], None] | None = None, peaks: Mapping[str, Peak] | None = None) -> TuneResult:
    """Search fold, backend, precision and batch size for ``config.target``; recommend the fastest."""
    config.validate()
    device = resolve_device(config.device)
    with torch_threads(config.threads):
        entries = tune_entries(config)
        calibration = None
        if config.data is not None and any(is_quantized(p) for p in config.precisions):
            calibration = load_calibration(config.data, entries[0].config.task, seed=config.seed)
        registry = calibrated_registry(BACKENDS if registry is None else registry, calibration)
        cache = PreparedCache(device, registry, on_notice)
        int8_notice = calibration_notice(config.precisions, calibration)
        if int8_notice is not None:
            cache.notice(int8_notice)
        samples = [dict(peaks)] if peaks is not None else [
            measure_peaks(config.precisions, device, config.peak_seconds)]
        costs: list[PrecisionCost] = []
        if config.data is not None:
            pairs = [(b, p) for b in config.resolved_backends() for p in config.precisions
                     if p != "fp32" and (b, p) not in config.exclude]
            # the checkpoint's own entry: beside a folded one, entries[0] is the task's random-weight Original
            trained = next(e for e in entries if e.trained)
            costs = precision_costs(trained, pairs, config.resolved_screen_batch(), cache, Path(config.data))
        excluded = frozenset((c.backend, c.precision) for c in costs
                             if config.max_accuracy_drop is not None and c.accuracy_drop > config.max_accuracy_drop)
        screen, final = search(entries, cache, config, progress=progress, excluded=excluded)
        if peaks is None:
            samples.append(measure_peaks(config.precisions, device, config.peak_seconds))
        final_peaks = best_peaks(*samples)
        final = add_utilization(final, final_peaks)
        best = best_configs(final)
        recommended = max(best, key=lambda b: b.throughput, default=None)
        return TuneResult(config.target, add_utilization(screen, final_peaks), final, best, recommended, costs,
                          cache.notices, final_peaks, machine_info(str(device)))


def load_test_images(root: Path, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``root/test`` (or ``root`` itself when it holds class folders) as (uint8 images, labels)."""
    split = root / TEST_SPLIT if (root / TEST_SPLIT).is_dir() else root
    return ImageFolder(split, classes=list(class_names)).tensors()


def predict(prepared: Prepared, x: torch.Tensor, images_per_call: int) -> torch.Tensor:
    """Predicted classes of float images ``x`` (N, C, H, W) in calls of ``images_per_call`` images.

    The runner pads the last group and, for a static-shape backend, the last call. Returns int64 (N,).
    """
    preds = [prepared.classify(x[start:start + images_per_call]).argmax(dim=1).cpu()
             for start in range(0, x.shape[0], images_per_call)]
    return torch.cat(preds)


def precision_costs(entry: ModelEntry, pairs: Sequence[tuple[str, str]], batch_size: int, cache: PreparedCache,
                    data: Path) -> list[PrecisionCost]:
    """Accuracy of the checkpoint's model at each (backend, reduced precision) vs fp32 eager on the test split."""
    images, labels = load_test_images(data, entry.config.task.class_names)
    order = eval_order(len(labels), entry.config.fold)  # folded as evaluate() folds them, not class by class
    images, labels = images[order], labels[order]
    x = to_model_input(images, entry.config.task, layout="nchw")
    reference = Candidate(entry, "eager", "fp32", batch_size)
    ref_prepared = cache.get(reference)
    if ref_prepared is None:
        raise ConfigError("fp32 eager cannot run the checkpoint here, so accuracy has no reference")
    ref_pred = predict(ref_prepared, x, reference.images)
    ref_acc = float((ref_pred == labels).float().mean())
    costs = []
    for backend, precision in pairs:
        candidate = Candidate(entry, backend, precision, batch_size)
        prepared = cache.get(candidate)
        if prepared is None:
            continue
        pred = predict(prepared, x, candidate.images)
        costs.append(PrecisionCost(backend, precision, len(labels), float((pred == labels).float().mean()),
                                   ref_acc, float((pred == ref_pred).float().mean())))
    return costs
