"""PyTorch backends: ``eager`` (NCHW), ``channels-last`` (NHWC memory format) and ``compile`` (inductor)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from foldedcnns.runtime.backends.base import Backend, Runner, torch_input, torch_model

if TYPE_CHECKING:
    from foldedcnns.runtime.engine import Engine

# Dynamo recompiles a shared ``forward`` once per model and input shape; the default limit (8) would
# silently fall back to eager in a sweep, so a benchmark raises it and makes hitting it an error.
COMPILE_RECOMPILE_LIMIT = 1024


def _same(y: torch.Tensor) -> torch.Tensor:
    return y


def _inference(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(x)

    return run


class EagerBackend(Backend):
    name = "eager"
    description = "PyTorch eager, NCHW"
    channels_last = False

    def build(self, model: nn.Module, example: torch.Tensor, engine: Engine, fold: int) -> Runner:
        device = torch.device(engine.device)
        cast = torch_model(model, device, engine.precision, self.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return Runner(_inference(cast), torch_input(device, engine.precision, self.channels_last), _same, module=cast)


class ChannelsLastBackend(EagerBackend):
    """oneDNN (CPU) and cuDNN (GPU) pick their NHWC kernels for a channels-last module and input."""

    name = "channels-last"
    description = "PyTorch eager, channels-last (NHWC) memory format"
    channels_last = True


@contextlib.contextmanager
def compile_limits() -> Iterator[None]:
    """Raise dynamo's recompile limits and make hitting them an error instead of a silent eager fallback."""
    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit") if hasattr(config, n)]
    saved = {n: getattr(config, n) for n in names}
    saved_fail = getattr(config, "fail_on_recompile_limit_hit", None)
    try:
        for n in names:
            setattr(config, n, max(saved[n], COMPILE_RECOMPILE_LIMIT))
        if saved_fail is not None:
            config.fail_on_recompile_limit_hit = True
        yield
    finally:
        for n, v in saved.items():
            setattr(config, n, v)
        if saved_fail is not None:
            config.fail_on_recompile_limit_hit = saved_fail


@contextlib.contextmanager
def inductor_freezing(enabled: bool) -> Iterator[None]:
    """Inductor's ``freezing`` option set to ``enabled`` while a model compiles (its first call)."""
    import torch._inductor.config as inductor_config  # torch's own submodule, loaded only when compiling

    with inductor_config.patch(freezing=enabled):
        yield


class CompileBackend(Backend):
    """``torch.compile`` with inductor, static shapes, and by default *freezing*: the weights are
    treated as constants, so inductor folds them, prepacks them for oneDNN on the CPU and fuses each
    convolution with its ReLU (PyTorch's recommended setting for CPU inference). Model and input are
    channels-last (NHWC), which saves a layout copy of the input. A frozen model no longer sees later
    changes to the module's weights; prepare again after training. Each new batch size compiles again,
    so the runner pads every call to the prepared shape (docs/benchmarks.md has the measured figures)."""

    name = "compile"
    description = "torch.compile (inductor, frozen weights), static shapes"
    static_shapes = True

    def __init__(self, mode: str | None = None, freeze: bool = True) -> None:
        self.mode = mode
        self.freeze = freeze

    def available(self, device: torch.device, precision: str) -> tuple[bool, str]:
        if not hasattr(torch, "compile"):
            return False, "this torch has no torch.compile"
        return True, ""

    def build(self, model: nn.Module, example: torch.Tensor, engine: Engine, fold: int) -> Runner:
        device = torch.device(engine.device)
        cast = torch_model(model, device, engine.precision, channels_last=True)
        compiled = torch.compile(cast, mode=self.mode, dynamic=False)
        freeze = self.freeze

        def run(x: torch.Tensor) -> torch.Tensor:
            with compile_limits(), inductor_freezing(freeze), torch.inference_mode():  # a new shape compiles
                return compiled(x)

        # the check call compiles; a failure there is BackendUnavailable
        return Runner(run, torch_input(device, engine.precision, True), _same, module=cast, keep=(compiled,))
