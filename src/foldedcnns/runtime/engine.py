"""``Engine``: the one value that says how a model runs (backend, precision, device, threads, calibration).

Every entry point that runs a model (``Predictor``, ``evaluate``, ``run_predict``, ``run_ray_predict``,
``build_service``, the Ray Serve application, ``tune``, the OpenVINO export) takes one ``engine=``
instead of loose settings, and the CLI parses it in one place (``cli/common.py: add_engine_options``)::

    from foldedcnns.runtime import Engine

    Engine()                                     # eager, fp32, CPU, PyTorch's threads
    Engine("openvino", "int8", calibration=cal)  # cal: foldedcnns.data.calibration.load_calibration(...)
    Engine("compile", device="cuda", threads=4)

``engine.prepare(model, batch_images)`` returns the :class:`Prepared` runner. An Engine is frozen and
picklable (Ray ships it to its workers); fields are checked when it is made, the device resolved when it
prepares (so a driver without a GPU can describe a GPU worker's engine).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from foldedcnns.core.folding import round_batch
from foldedcnns.data.calibration import Calibration, load_calibration
from foldedcnns.errors import ConfigError
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.backends.base import Backend, Prepared, get_backend, model_fold, precision_dtype
from foldedcnns.runtime.backends.quantize import is_quantized
from foldedcnns.runtime.device import check_device, resolve_device
from foldedcnns.runtime.threads import check_threads

DEFAULT_BACKEND = "eager"
DEFAULT_PRECISION = "fp32"
DEFAULT_DEVICE = "cpu"
# The backends tune, the demo, bench and the benchmark scripts search by default on each kind of device.
DEFAULT_BACKENDS: dict[str, tuple[str, ...]] = {
    "cpu": ("eager", "channels-last", "compile", "onnxruntime", "openvino"),
    "cuda": ("eager", "channels-last", "onnxruntime", "cuda-graphs"),
}


def default_backends(device: str | torch.device = DEFAULT_DEVICE) -> tuple[str, ...]:
    """The backends searched by default on ``device`` (``cpu``, ``cuda[:i]``; ``auto`` as it resolves)."""
    name = str(device)
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name).type
    return DEFAULT_BACKENDS.get(kind, DEFAULT_BACKENDS["cpu"])


@dataclass(frozen=True)
class Engine:
    """How a model runs: a registered backend at a precision on a device, with ``threads`` intra-op threads
    (None: PyTorch's current count) and, for int8, the ``calibration`` images the engine quantizes with
    (None: seeded random input, throughput only)."""

    backend: str = DEFAULT_BACKEND
    precision: str = DEFAULT_PRECISION
    device: str = DEFAULT_DEVICE
    threads: int | None = None
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        get_backend(self.backend)
        precision_dtype(self.precision)
        object.__setattr__(self, "device", check_device(self.device))
        check_threads(self.threads)
        if self.calibration is not None:
            object.__setattr__(self, "calibration", Calibration.of(self.calibration))

    def __repr__(self) -> str:
        calibration = f", calibration={self.calibration.source!r}" if self.calibration is not None else ""
        threads = f", threads={self.threads}" if self.threads is not None else ""
        return f"Engine({self.backend!r}, {self.precision!r}, device={self.device!r}{threads}{calibration})"

    @property
    def runner(self) -> Backend:
        """The registered :class:`Backend` of ``backend``."""
        return get_backend(self.backend)

    @property
    def pytorch_threads(self) -> int | None:
        """PyTorch's intra-op threads around this engine's calls: ``threads`` when PyTorch runs the model; one
        when another engine with its own threads does (PyTorch then only prepares the input and post-processes,
        and its idle OpenMP threads would spin on the cores the engine's threads need)."""
        return self.threads if self.runner.torch_runs_model else 1

    def replace(self, **changes: object) -> Engine:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def quantized(self) -> bool:
        """Whether the engine quantizes the model (int8) rather than casting it."""
        return is_quantized(self.precision)

    def resolved(self) -> Engine:
        """This engine with ``auto`` (or a bare ``cuda``) resolved to the device it runs on here."""
        device = str(resolve_device(self.device))
        return self if device == self.device else self.replace(device=device)

    def is_available(self) -> tuple[bool, str]:
        """``(ok, reason)``: whether this backend runs at this precision on this device here."""
        return self.runner.is_available(resolve_device(self.device), self.precision)

    def check_available(self) -> Engine:
        """The resolved engine, or a one-line :class:`ConfigError` naming why it cannot run here."""
        engine = self.resolved()
        ok, reason = engine.runner.is_available(engine.device, engine.precision)
        if not ok:
            raise ConfigError(f"backend {engine.backend} cannot run {engine.precision} on "
                              f"{torch.device(engine.device).type} here: {reason}")
        return engine

    def for_deployment(self, task: TaskSpec, data: str | Path | None = None) -> Engine:
        """The engine as deployed (predict, serve, export, Ray): int8 calibrated on the task's images, its
        own ``calibration`` else up to 300 images of ``data``'s train (else val) split; never random input,
        so int8 without either is a one-line :class:`ConfigError` naming ``--data``. Other precisions: self."""
        if not self.quantized or self.calibration is not None:
            return self
        if data is None:
            raise ConfigError(f"{self.precision} must be calibrated on the task's images: pass --data DIR (the data "
                              "set with DIR/train/<class>/...)")
        return self.replace(calibration=load_calibration(data, task))

    def prepare(self, model: nn.Module, batch_images: int, *, fold: int | None = None,
                input_shape: tuple[int, int, int] | None = None, partial_batches: bool = False) -> Prepared:
        """A :class:`Prepared` runner of ``model`` for calls of ``batch_images`` images (rounded up to a
        multiple of the fold). ``input_shape`` ``(f*C, H, W)`` defaults to ``model.config.input_shape``.
        ``partial_batches``: calls vary in size (a server's batches), so a static-shape backend is also
        prepared for smaller ones (:meth:`Backend.prepare`). A backend that cannot run here is a one-line
        :class:`ConfigError`."""
        engine = self.check_available()
        f = model_fold(model) if fold is None else fold
        if input_shape is None:
            config = getattr(model, "config", None)
            if config is None:
                raise ConfigError("model has no .config; build it with foldedcnns.build_model or pass input_shape=")
            input_shape = tuple(config.input_shape)
        groups = round_batch(batch_images, f, "up") // f
        example = torch.rand(groups, *input_shape, generator=torch.Generator().manual_seed(0))
        return engine.runner.prepare(model, example, engine, fold=f, partial_batches=partial_batches)
