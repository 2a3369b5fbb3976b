"""The backend interface and :class:`Prepared`, the runner every model run goes through.

Every backend answers :meth:`Backend.is_available` (``(ok, reason)``: is it installed, does it run
on this device at this precision) and :meth:`Backend.prepare`, which turns an eval-mode model and
an example folded input ``(G, f*C, H, W)`` into a :class:`Prepared` runner. Preparing does all
one-off work (casting, layout change, compilation, ONNX export, CUDA-graph capture) and one
check call, so an unsupported kernel shows up there as :class:`BackendUnavailable` (a one-line
reason), never in the middle of a timed loop.

Precisions (``PRECISIONS``): ``fp32``, ``bf16`` and ``fp16``. A reduced precision casts the weights
and the input, so every layer runs in that type; logits come back as float32. ``int8`` is no cast: the
model and input stay float32 and a quantizing engine (``openvino``, ``onnxruntime``) quantizes the graph
after calibrating it (:mod:`foldedcnns.runtime.backends.quantize`); the PyTorch backends report it
unavailable.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from foldedcnns.core.folding import run_folded
from foldedcnns.errors import ConfigError, FoldedCNNsError, ShapeError, first_line
from foldedcnns.runtime.backends.quantize import Calibration, is_quantized

# The dtype the model and input are cast to; int8 stays float32 (the engine quantizes the graph itself).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                                      "int8": torch.float32}
QUANTIZING_BACKENDS = ("openvino", "openvino-streams", "onnxruntime")


class BackendUnavailable(FoldedCNNsError):
    """A backend or precision that cannot run here; the message is the one-line reason."""


def precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def model_fold(model: nn.Module) -> int:
    """The fold of a model built by :func:`foldedcnns.build_model` (its ``config``), else 1."""
    config = getattr(model, "config", None)
    return int(getattr(config, "fold", 1) or 1)


class Prepared:
    """A model made ready by one backend at one precision on one device.

    Three levels of call:

    * ``run(prepare_input(x))``: the backend's raw call on an input already in its dtype, layout
      and device (a NumPy array for ONNX Runtime); this is what a benchmark times.
    * ``folded(x)``: float folded inputs ``(G, f*C, H, W) -> (G, f*K)`` float32 logits on the device.
      A static-shape backend (compile, cuda-graphs) was prepared for ``static_inputs`` folded inputs:
      a smaller call is padded to that shape by repeating its last folded input and a larger one is
      cut into calls of that shape, so it never compiles or captures again.
    * ``classify(images)`` (also ``__call__``): per-image float input ``(N, C, H, W) -> (N, K)``:
      the last partial group is padded by the project's one rule, folded, run, unfolded and the
      padded rows dropped (:func:`foldedcnns.core.run_folded`).
    """

    def __init__(self, backend: str, precision: str, device: torch.device, run: Callable[[Any], Any],
                 prepare_input: Callable[[torch.Tensor], Any], to_tensor: Callable[[Any], torch.Tensor], *,
                 fold: int = 1, static_inputs: int | None = None, module: nn.Module | None = None,
                 keep: list[Any] | None = None) -> None:
        self.backend = backend
        self.precision = precision
        self.device = device
        self.run = run
        self.prepare_input = prepare_input
        self.to_tensor = to_tensor
        self.fold = fold
        self.static_inputs = static_inputs
        self.module = module  # the backend's own cast copy of a PyTorch model (None for other engines)
        self.setup_seconds = 0.0
        self.calibration: str | None = None  # int8: what the engine was calibrated on
        self._keep = list(keep or [])  # objects the runner needs alive (models, sessions, graphs)

    def __repr__(self) -> str:
        return (f"Prepared(backend={self.backend!r}, precision={self.precision!r}, device={str(self.device)!r}, "
                f"fold={self.fold}, static_inputs={self.static_inputs})")

    def keep(self, *objects: Any) -> None:
        """Keep ``objects`` alive as long as the runner."""
        self._keep.extend(objects)

    def close(self) -> None:
        """Release what the runner holds (compiled code, sessions, graphs); it cannot run afterwards."""
        self._keep.clear()
        self.module = None

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_tensor(self.run(self.prepare_input(x))).float()

    def folded(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of folded inputs. Shapes: ``(G, f*C, H, W) -> (G, f*K)``."""
        with torch.inference_mode():
            size = self.static_inputs
            if size is None or x.shape[0] == size:
                return self._raw(x)
            outs = []
            for start in range(0, x.shape[0], size):
                chunk = x[start:start + size]
                real = chunk.shape[0]
                if real < size:
                    chunk = torch.cat([chunk, chunk[-1:].expand(size - real, *chunk.shape[1:])])
                outs.append(self._raw(chunk)[:real])
            return torch.cat(outs)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image float32 logits. Shapes: ``(N, C, H, W) -> (N, K)``, N >= 1 (any N)."""
        if images.dim() != 4:
            raise ShapeError(f"expected a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
        return run_folded(self.folded, images, self.fold)

    __call__ = classify


def device_precision_check(device: torch.device, precision: str, *, quantizes: bool = False) -> tuple[bool, str]:
    """The checks every backend shares; ``quantizes``: the backend quantizes int8 itself."""
    precision_dtype(precision)
    if is_quantized(precision) and not quantizes:
        return False, (f"{precision} is post-training quantization by an engine; use a backend of "
                       f"{', '.join(QUANTIZING_BACKENDS)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available on this machine; use --device cpu"
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return False, "this GPU has no bf16 support"
    return True, ""


def check_call(prepared: Prepared, example: torch.Tensor) -> Prepared:
    """Run once so a missing kernel is a :class:`BackendUnavailable`, not a crash in a timed loop."""
    try:
        out = prepared.to_tensor(prepared.run(prepared.prepare_input(example)))
    except RuntimeError as exc:  # also NotImplementedError and dynamo/inductor failures
        raise BackendUnavailable(first_line(exc)) from exc
    if out.shape[0] != example.shape[0]:
        raise BackendUnavailable(f"returned {out.shape[0]} rows for {example.shape[0]} inputs")
    return prepared


class Backend:
    """Interface: ``is_available(device, precision)`` and ``prepare(model, example, ...)``."""

    name: str = ""
    description: str = ""
    static_shapes: bool = False  # True: one preparation per input shape (compilation, graph capture)

    def is_available(self, device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[bool, str]:
        return device_precision_check(torch.device(device), precision)

    def prepare(self, model: nn.Module, example: torch.Tensor, *, precision: str = "fp32",
                device: str | torch.device = "cpu", fold: int | None = None) -> Prepared:
        """A runner of ``model`` for inputs shaped like ``example`` ``(G, f*C, H, W)``.

        ``fold`` defaults to the model's own (``model.config.fold``, 1 for a plain module).
        """
        raise NotImplementedError

    def calibrated(self, calibration: Calibration | None) -> Backend:
        """This backend with int8 calibration images (a quantizing backend returns a copy; others ``self``)."""
        return self

    def _require(self, device: torch.device, precision: str) -> None:
        ok, reason = self.is_available(device, precision)
        if not ok:
            raise BackendUnavailable(reason)

    def _finish(self, prepared: Prepared, model: nn.Module, example: torch.Tensor, fold: int | None,
                started: float) -> Prepared:
        """Set the fold and static shape, make the check call, record the set-up time."""
        prepared.fold = model_fold(model) if fold is None else fold
        prepared.static_inputs = int(example.shape[0]) if self.static_shapes else None
        check_call(prepared, example)
        prepared.setup_seconds = time.perf_counter() - started
        return prepared


def torch_model(model: nn.Module, device: torch.device, precision: str, channels_last: bool) -> nn.Module:
    """A cast copy of ``model``: preparing never changes the caller's module."""
    _no_quantized_cast(precision)
    model = copy.deepcopy(model).to(device=device, dtype=precision_dtype(precision)).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def torch_input(device: torch.device, precision: str, channels_last: bool) -> Callable[[torch.Tensor], Any]:
    _no_quantized_cast(precision)
    dtype = precision_dtype(precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def prepare_input(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)

    return prepare_input


def _no_quantized_cast(precision: str) -> None:
    if is_quantized(precision):
        raise BackendUnavailable(f"a PyTorch backend cannot run {precision}; use a backend of "
                                 f"{', '.join(QUANTIZING_BACKENDS)}")
