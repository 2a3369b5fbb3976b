"""``tune``: the speed search of :mod:`foldedcnns.benchmark.tune` plus the accuracy cost of reduced precision.

With ``config.data`` (a folder with ``test/<class>/<image>``) and a checkpoint, each reduced precision
of the candidate engines is evaluated on the test split against fp32 eager, by training's own evaluation
loop (:func:`foldedcnns.training.evaluation.evaluate_split`, the loop ``foldedcnns evaluate`` runs), so
tune's fp32 accuracy is ``evaluate``'s: accuracy and agreement (same predicted class as fp32) are
reported beside the speed, and ``max_accuracy_drop`` leaves out precisions that lose more than that.

``int8`` (``openvino``, ``onnxruntime``) is calibrated on ``config.calibration``, else on up to 300 seeded
images of ``data``'s train (else val) split, so its accuracy is measured on test images it was not
calibrated on; without either it is calibrated on random input and a notice says its accuracy is
unknown (throughput only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from foldedcnns.benchmark.grid import Candidate, ModelEntry
from foldedcnns.benchmark.peak import Peak
from foldedcnns.benchmark.runner import PreparedCache, measure_peaks
from foldedcnns.benchmark.tune import (
    PrecisionCost,
    TuneConfig,
    TuneResult,
    search,
    tune_cache,
    tune_entries,
    tune_result,
)
from foldedcnns.data.calibration import load_calibration
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import is_quantized
from foldedcnns.runtime.device import resolve_device
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.training.evaluation import EvalOutputs, evaluate_split
from foldedcnns.training.splits import SplitData, load_split

TEST_SPLIT = "test"
REFERENCE = ("eager", "fp32")  # what each reduced precision is compared with


def tune(config: TuneConfig, *, progress: bool = False, on_notice: Callable[[str], None] | None = None,
         peaks: Mapping[str, Peak] | None = None) -> TuneResult:
    """Search fold, backend, precision and batch size for ``config.target``; recommend the fastest.

    With ``config.data`` the accuracy cost of each reduced precision is measured first (see the module
    docstring). ``peaks`` gives the matmul peaks instead of measuring them; ``on_notice`` receives each
    one-line notice as it happens.
    """
    config.validate()
    device = resolve_device(config.device)
    with torch_threads(config.threads):
        entries = tune_entries(config)
        if config.calibration is None and config.data is not None and any(is_quantized(p) for p in config.precisions):
            config = replace(config, calibration=load_calibration(config.data, entries[0].config.task,
                                                                  seed=config.seed))
        cache = tune_cache(config, device, on_notice)
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
        return tune_result(config, screen, final, cache, samples, costs)


def _evaluate(candidate: Candidate, cache: PreparedCache, split: SplitData) -> EvalOutputs | None:
    """``evaluate``'s loop over ``split`` on the candidate's runner, in calls of its batch (None: cannot run)."""
    prepared = cache.get(candidate)
    if prepared is None:
        return None
    return evaluate_split(prepared, split, candidate.entry.config.task, batch_size=candidate.images,
                          name=f"{candidate.backend} {candidate.precision}")


def top1(outputs: EvalOutputs) -> float:
    """Top-1 as a fraction, computed as ``evaluate`` computes its percentage."""
    return float(outputs.summary()["top1"]) / 100.0


def precision_costs(entry: ModelEntry, pairs: Sequence[tuple[str, str]], batch_size: int, cache: PreparedCache,
                    data: Path) -> list[PrecisionCost]:
    """Accuracy of the checkpoint's model at each (backend, reduced precision) vs fp32 eager on the test split."""
    split = load_split(data, entry.config.task, TEST_SPLIT, entry.config.image_size)
    reference = _evaluate(Candidate(entry, *REFERENCE, batch_size), cache, split)
    if reference is None:
        raise ConfigError("fp32 eager cannot run the checkpoint here, so accuracy has no reference")
    costs = []
    for backend, precision in pairs:
        outputs = _evaluate(Candidate(entry, backend, precision, batch_size), cache, split)
        if outputs is None:
            continue
        agreement = float((outputs.predicted == reference.predicted).float().mean())
        costs.append(PrecisionCost(backend, precision, len(split), top1(outputs), top1(reference), agreement))
    return costs
