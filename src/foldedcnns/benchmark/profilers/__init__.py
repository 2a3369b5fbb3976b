"""Per-layer profiles: where one call's time goes, and at what FLOPs/sec each layer runs.

One profiler per engine, each behind the :class:`LayerProfiler` protocol and preparing the model
through its engine's backend:

* ``eager``, ``channels-last``: forward hooks on every leaf module (:mod:`.torch_hooks`);
* ``compile`` (frozen inductor, CPU): ``torch.profiler`` over the ops and kernels it calls (:mod:`.compiled`);
* ``onnxruntime``: the session's own per-node profiler (:mod:`.onnxruntime`);
* ``openvino`` (fp32, bf16 and int8): the compiled model's performance counters (:mod:`.openvino`).

:func:`profile_interleaved` profiles several models (one task at f = 1..4) with their calls taking
turns, so their per-layer rates compare. A new engine's profiler is one module with a class that
follows :class:`LayerProfiler` (and names its ``backends``), plus one entry in :data:`PROFILERS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from foldedcnns.benchmark.profilers.base import (
    LayerFlops,
    LayerProfile,
    LayerProfiler,
    LayerTime,
    in_order,
    layer_flops,
)
from foldedcnns.benchmark.profilers.compiled import CompileProfiler
from foldedcnns.benchmark.profilers.onnxruntime import OrtProfiler
from foldedcnns.benchmark.profilers.openvino import OpenVinoProfiler, openvino_kind
from foldedcnns.benchmark.profilers.torch_hooks import HookProfiler
from foldedcnns.benchmark.timing import folded_inputs
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads

# backend name -> the profiler class that times it
PROFILERS: dict[str, type[HookProfiler | CompileProfiler | OrtProfiler | OpenVinoProfiler]] = {
    backend: cls for cls in (HookProfiler, CompileProfiler, OrtProfiler, OpenVinoProfiler) for backend in cls.backends}
PROFILE_BACKENDS: tuple[str, ...] = tuple(PROFILERS)
QUANTIZED_PROFILE_BACKENDS: tuple[str, ...] = tuple(name for name, cls in PROFILERS.items() if cls.quantized)
DEFAULT_PROFILE_BACKEND = "channels-last"

__all__ = ["PROFILERS", "PROFILE_BACKENDS", "QUANTIZED_PROFILE_BACKENDS", "LayerFlops", "LayerProfile",
           "LayerProfiler", "LayerTime", "can_profile", "in_order", "layer_flops", "openvino_kind",
           "profile_interleaved", "profile_layers"]


def can_profile(engine: Engine) -> bool:
    """Whether :func:`profile_interleaved` can profile ``engine``'s backend at its precision."""
    cls = PROFILERS.get(engine.backend)
    return cls is not None and (not engine.quantized or cls.quantized)


def profile_layers(model: nn.Module, engine: Engine | None = None, *, batch_size: int = 1024, warmup: int = 1,
                   iterations: int = 3, seed: int = 0) -> LayerProfile:
    """Profile ``model`` (with ``model.config``) on ``engine`` (default ``channels-last`` fp32 on the CPU)
    at a nominal batch of ``batch_size`` images."""
    return profile_interleaved([model], engine, batch_size=batch_size, warmup=warmup, iterations=iterations,
                               seed=seed)[0]


def profile_interleaved(models: Sequence[nn.Module], engine: Engine | None = None, *, batch_size: int = 1024,
                        warmup: int = 1, iterations: int = 3, seed: int = 0) -> list[LayerProfile]:
    """Profile several models (e.g. one task at f = 1..4) on ``engine`` with their calls interleaved.

    After ``warmup`` untimed calls each, the models take turns, one recorded call each per round for
    ``iterations`` rounds, so load changes on the machine hit all of them alike; each layer's time is
    the median over rounds. ``engine`` defaults to ``channels-last`` fp32 on the CPU; its threads (None:
    PyTorch's current count) are used for the whole profile.
    """
    engine = Engine(DEFAULT_PROFILE_BACKEND) if engine is None else engine
    if not can_profile(engine):
        if engine.backend not in PROFILERS:
            raise ConfigError(f"per-layer profiles exist for {', '.join(PROFILE_BACKENDS)}, not {engine.backend!r}")
        raise ConfigError(f"per-layer profiles of {engine.precision} models exist for "
                          f"{', '.join(QUANTIZED_PROFILE_BACKENDS)} only; profile {engine.backend} at fp32 or bf16")
    if iterations < 1 or warmup < 0:
        raise ConfigError(f"iterations must be >= 1 and warm-up >= 0, got {iterations} and {warmup}")
    engine = engine.resolved()
    profiler_class = PROFILERS[engine.backend]
    with torch_threads(engine.threads):
        profilers: list[LayerProfiler] = []
        try:
            for model in models:
                config = model.config
                inputs = folded_inputs(batch_size, config.fold)
                x = torch.rand(inputs, *config.input_shape, generator=torch.Generator().manual_seed(seed))
                profilers.append(profiler_class(model, x, engine, layer_flops(model, inputs)))
            for profiler in profilers:
                for _ in range(warmup):
                    profiler.call(record=False)
            for _ in range(iterations):
                for profiler in profilers:
                    profiler.call(record=True)
            results = [profiler.layers() for profiler in profilers]
        finally:
            for profiler in profilers:
                profiler.close()
    return [LayerProfile(m.config.task.name, m.config.fold, engine.backend, engine.precision, batch_size,
                         folded_inputs(batch_size, m.config.fold) * m.config.fold, tuple(layers))
            for m, layers in zip(models, results, strict=True)]
