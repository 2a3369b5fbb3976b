"""Tables built from the analysis primitives: the ``flops`` summary and the ``intensity`` rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from foldedcnns.analysis.flops import FlopReport, count_flops, model_flops
from foldedcnns.analysis.intensity import inputs_per_batch, layer_intensity, model_intensity
from foldedcnns.errors import ConfigError
from foldedcnns.models.compound import DEFAULT_PHI
from foldedcnns.models.registry import ModelConfig, build_model, get_task, list_models
from foldedcnns.models.spec import TaskSpec

CONVENTIONS = ("original", "exact")
INTENSITY_CSV_HEADER = ("task", "mode", "fold", "batch_size", "bytes_per_element", "ops", "bytes",
                        "arithmetic_intensity")


def shape_model(task: str | TaskSpec, **kwargs: Any) -> nn.Module:
    """Build a model on the meta device: shapes and costs without allocating or computing anything."""
    with torch.device("meta"):
        return build_model(task, init=False, **kwargs)


def model_config(task: str, fold: int = 1, multiplier: float | None = None) -> ModelConfig:
    """The :class:`ModelConfig` of ``task`` at ``fold``."""
    return shape_model(task, fold=fold, multiplier=multiplier).config


def flops_summary(config: ModelConfig, report: FlopReport | None = None, per_layer: bool = False) -> dict[str, Any]:
    """The ``foldedcnns flops --json`` object for one model."""
    report = report or model_flops(config)
    out: dict[str, Any] = {
        "task": config.name,
        "mode": config.mode,
        "fold": config.fold,
        "multiplier": config.multiplier,
        "input_shape": list(config.input_shape),
        "params": report.params,
        "macs": report.macs,
        "flops": report.flops,
        "flops_reference": report.flops_reference,
        "flops_per_image": report.flops_per_image,
    }
    if config.compound_phi is not None:
        out["phi"] = config.compound_phi
    if per_layer:
        out["layers"] = [layer.to_dict() for layer in report.layers]
        out["uncounted"] = report.uncounted
    return out


@dataclass(frozen=True)
class IntensityRow:
    """One row of the ``intensity`` table (the CSV columns, in order)."""

    task: str
    mode: str
    fold: int
    batch_size: int
    bytes_per_element: float
    ops: float
    bytes: float
    arithmetic_intensity: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_intensity_tasks() -> list[str]:
    """Every game and NoScope task: the families the original's ai.py analyses."""
    return [n for n in list_models(compound=False) if get_task(n).family in ("game", "noscope")]


def intensity_rows(tasks: Sequence[str], folds: Sequence[int], batch_size: int, bytes_per_element: float,
                   *, compound: bool = True, convention: str = "original") -> list[IntensityRow]:
    """Arithmetic intensity of each task's original (f = 1), folded (f > 1) and compound model.

    ``convention="original"`` reproduces ai.py, including its quirk of dividing the compound model's
    batch by 2 (phi); ``"exact"`` uses the true batch for every model.
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    if batch_size < 1 or bytes_per_element <= 0:
        raise ConfigError("batch size must be >= 1 and bytes per element > 0")
    rows: list[IntensityRow] = []
    for task in tasks:
        spec = get_task(task)
        models = [shape_model(spec, fold=f) for f in sorted(set(folds))]
        if compound and spec.family == "game":
            models.append(shape_model(spec, phi=DEFAULT_PHI))
        for model in models:
            config, report = model.config, count_flops(model)
            divisor = config.fold
            if config.compound_phi is not None and convention == "original":
                divisor = config.compound_phi
            result = model_intensity(report.layers, inputs_per_batch(batch_size, divisor), bytes_per_element)
            rows.append(IntensityRow(spec.name, config.mode, config.fold, batch_size, bytes_per_element,
                                     result.ops, result.bytes, result.arithmetic_intensity))
    return rows


@dataclass(frozen=True)
class LayerIntensityRow:
    """Per-layer arithmetic intensity and whether the layer is memory-bound at a ridge point."""

    task: str
    mode: str
    fold: int
    layer: str
    kind: str
    ops: float
    bytes: float
    arithmetic_intensity: float
    memory_bound: bool


def layer_intensity_rows(task: str, folds: Sequence[int], batch_size: int, bytes_per_element: float,
                         ridge: float) -> list[LayerIntensityRow]:
    """Per-layer AI of ``task`` at each fold; ``memory_bound`` when AI < ``ridge`` (FLOP/byte)."""
    rows = []
    for fold in sorted(set(folds)):
        model = shape_model(task, fold=fold)
        config = model.config
        for layer in count_flops(model).layers:
            result = layer_intensity(layer, inputs_per_batch(batch_size, fold), bytes_per_element)
            ai = result.arithmetic_intensity
            rows.append(LayerIntensityRow(config.task.name, config.mode, fold, layer.name, layer.kind,
                                          result.ops, result.bytes, ai, ai < ridge))
    return rows
