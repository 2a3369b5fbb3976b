"""PyTorch backends: ``eager`` (NCHW), ``channels-last`` (NHWC memory format) and ``compile`` (inductor)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from foldedcnns.runtime.backends.base import Backend, Prepared, device_precision_check, torch_input, torch_model

# Dynamo recompiles a shared ``forward`` once per model and input shape; the default limit (8) would
# silently fall back to eager in a sweep, so a benchmark raises it and makes hitting it an error.
COMPILE_RECOMPILE_LIMIT = 1024


def _inference(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return fn(x)

    return run


class EagerBackend(Backend):
    name = "eager"
    description = "PyTorch eager, NCHW"
    channels_last = False

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu", fold: int | None = None) -> Prepared:
        device = torch.device(device)
        self._require(device, precision)
        start = time.perf_counter()
        cast = torch_model(model, device, precision, self.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        prepared = Prepared(self.name, precision, device, _inference(cast),
                            torch_input(device, precision, self.channels_last), lambda y: y, module=cast)
        return self._finish(prepared, model, example, fold, start)


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

    def is_available(self, device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[bool, str]:
        if not hasattr(torch, "compile"):
            return False, "this torch has no torch.compile"
        return device_precision_check(torch.device(device), precision)

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu", fold: int | None = None) -> Prepared:
        device = torch.device(device)
        self._require(device, precision)
        start = time.perf_counter()
        cast = torch_model(model, device, precision, channels_last=True)
        compiled = torch.compile(cast, mode=self.mode, dynamic=False)
        freeze = self.freeze

        def run(x: torch.Tensor) -> torch.Tensor:
            with compile_limits(), inductor_freezing(freeze), torch.inference_mode():  # a new shape compiles
                return compiled(x)

        prepared = Prepared(self.name, precision, device, run, torch_input(device, precision, True),
                            lambda y: y, module=cast, keep=[compiled])
        return self._finish(prepared, model, example, fold, start)  # compiles; failures -> unavailable
