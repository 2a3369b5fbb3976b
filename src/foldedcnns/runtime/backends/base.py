"""The backend interface, its registry, and :class:`Prepared`, the runner every model run goes through.

A backend is one way of running a model (PyTorch eager, ``torch.compile``, ONNX Runtime, OpenVINO,
...). :meth:`Backend.prepare` is a template: it checks that the backend runs here
(:meth:`Backend.is_available`: the shared device and precision checks, then the backend's own
:meth:`Backend.available`), calls the backend's one build step :meth:`Backend.build` under the engine's
thread count, makes one check call (so an unsupported kernel is a :class:`BackendUnavailable` with a
one-line reason, never a crash in a timed loop), and returns a complete :class:`Prepared`.

Adding an engine: one module with a :class:`Backend` subclass that sets ``name`` (and ``quantizes``,
``static_shapes``, ``devices`` where they differ) and implements ``build``, plus one
:func:`register_backend` line (docs/architecture.md).

Precisions (``PRECISIONS``): ``fp32``, ``bf16`` and ``fp16`` cast the weights and the input, so every
layer runs in that type; logits come back as float32. ``int8`` is no cast: the model and input stay
float32 and a quantizing engine (``quantizes = True``) quantizes the graph after calibrating it
(:mod:`foldedcnns.runtime.backends.quantize`); the others report it unavailable.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from foldedcnns.core.folding import Array, run_folded
from foldedcnns.errors import ConfigError, FoldedCNNsError, ShapeError, first_line
from foldedcnns.runtime.backends.quantize import calibration_source, is_quantized
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.utils.text import did_you_mean

if TYPE_CHECKING:
    from foldedcnns.runtime.engine import Engine

# The dtype the model and input are cast to; int8 stays float32 (the engine quantizes the graph itself).
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                                      "int8": torch.float32}


class BackendUnavailable(FoldedCNNsError):
    """A backend or precision that cannot run here; the message is the one-line reason."""


def precision_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
                          f"{did_you_mean(precision, PRECISIONS)}")
    return PRECISIONS[precision]


def model_fold(model: nn.Module) -> int:
    """The fold of a model built by :func:`foldedcnns.build_model` (its ``config``), else 1."""
    config = getattr(model, "config", None)
    return int(getattr(config, "fold", 1) or 1)


class Runner(NamedTuple):
    """What a backend's build step returns: the raw call and the conversions around it.

    ``run(prepare_input(x))`` is the engine's call on folded float input ``x`` ``(G, f*C, H, W)``;
    ``to_tensor`` turns its output into a torch tensor ``(G, f*K)``. ``module``: the backend's own cast
    copy of a PyTorch model (None for other engines); ``keep``: objects the runner needs alive.
    ``numpy_input``: for an engine whose call takes and gives NumPy arrays on the CPU (openvino,
    onnxruntime's CPU provider), the same as ``prepare_input`` from a float32 NumPy array, so a caller
    holding one need not go through PyTorch at all (None: the engine takes torch tensors).
    """

    run: Callable[[Any], Any]
    prepare_input: Callable[[torch.Tensor], Any]
    to_tensor: Callable[[Any], torch.Tensor]
    module: nn.Module | None = None
    keep: tuple[Any, ...] = ()
    numpy_input: Callable[[np.ndarray], Any] | None = None


class RunsOnEngine:
    """Mixin for what runs on an ``engine``: its ``backend``, ``precision`` and ``device`` read from it."""

    engine: Engine

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def device(self) -> torch.device:
        return torch.device(self.engine.device)

    @property
    def precision(self) -> str:
        return self.engine.precision


class Prepared(RunsOnEngine):
    """A model made ready by one engine (backend, precision, device, threads, calibration).

    Three levels of call:

    * ``run(prepare_input(x))``: the backend's raw call on an input already in its dtype, layout
      and device (a NumPy array for ONNX Runtime); this is what a benchmark times.
    * ``folded(x)``: float folded inputs ``(G, f*C, H, W) -> (G, f*K)`` float32 logits on the device.
      A static-shape backend (compile, cuda-graphs, openvino) was prepared for ``static_inputs`` folded
      inputs, and, when calls vary in size (``partial_batches``: a server's batches), also for the
      smaller ``shapes`` (:func:`partial_shapes`): a call runs at the smallest shape that holds it,
      padded by repeating its last folded input, and a larger one is cut into calls of the full shape,
      so it never compiles or captures again. Without the smaller shapes, a batch of 4 images on a
      runner prepared for 64 costs the model as much as 64 (``docs/serving.md``).
    * ``classify(images)`` (also ``__call__``): per-image float input ``(N, C, H, W) -> (N, K)``:
      the last partial group is padded by the project's one rule, folded, run, unfolded and the
      padded rows dropped (:func:`foldedcnns.core.run_folded`).

    ``folded`` and ``classify`` also take a float32 NumPy array where :attr:`numpy_io` (an engine that
    runs on NumPy arrays) and then give one: the same steps, with no PyTorch call around the engine's.
    """

    def __init__(self, engine: Engine, runner: Runner, *, fold: int, static_inputs: int | None,
                 setup_seconds: float, smaller: dict[int, Runner] | None = None) -> None:
        self.engine = engine
        self.run = runner.run
        self.prepare_input = runner.prepare_input
        self.to_tensor = runner.to_tensor
        self.module = runner.module
        self.fold = fold
        self.static_inputs = static_inputs
        self.setup_seconds = setup_seconds
        # int8: what the engine was calibrated on
        self.calibration = calibration_source(engine.calibration) if is_quantized(engine.precision) else None
        self._runner = runner
        smaller = smaller or {}
        self._keep = [*runner.keep, *(kept for extra in smaller.values() for kept in extra.keep)]
        # (folded inputs, runner) of every static shape, smallest first; the full shape last
        self._shapes = sorted({**smaller, **({static_inputs: runner} if static_inputs is not None else {})}.items())

    @property
    def numpy_io(self) -> bool:
        """Whether the engine's call takes and gives NumPy arrays (``folded`` and ``classify`` then take them)."""
        return self._runner.numpy_input is not None

    @property
    def shapes(self) -> tuple[int, ...]:
        """The folded-input counts a static-shape runner was prepared for, smallest first (empty: any)."""
        return tuple(size for size, _ in self._shapes)

    def __repr__(self) -> str:
        return (f"Prepared(backend={self.backend!r}, precision={self.precision!r}, device={str(self.device)!r}, "
                f"fold={self.fold}, static_inputs={self.static_inputs}, shapes={self.shapes})")

    def close(self) -> None:
        """Release what the runner holds (compiled code, sessions, graphs); it cannot run afterwards."""
        self._keep.clear()
        self._shapes = []
        self.module = None

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @staticmethod
    def _raw(runner: Runner, x: Array) -> Array:
        if isinstance(x, np.ndarray):  # a copy: an engine may hand out a buffer that its next call overwrites
            return np.array(runner.run(runner.numpy_input(x)), np.float32)
        return runner.to_tensor(runner.run(runner.prepare_input(x))).float()

    def folded(self, x: Array) -> Array:
        """Float32 logits of folded inputs. Shapes: ``(G, f*C, H, W) -> (G, f*K)``."""
        if isinstance(x, np.ndarray) and not self.numpy_io:
            raise TypeError(f"the {self.backend} engine takes torch tensors, not NumPy arrays")
        concatenate = np.concatenate if isinstance(x, np.ndarray) else torch.cat
        with torch.inference_mode():
            size = self.static_inputs
            if size is None or x.shape[0] == size:
                return self._raw(self._runner, x)
            outs = []
            for start in range(0, x.shape[0], size):
                chunk = x[start:start + size]
                real = chunk.shape[0]
                shape, runner = next((s, r) for s, r in self._shapes if s >= real)
                if real < shape:  # repeat the last folded input up to the static shape
                    repeat = (shape - real, *chunk.shape[1:])
                    last = chunk[-1:]
                    chunk = concatenate([chunk, np.broadcast_to(last, repeat) if isinstance(last, np.ndarray)
                                         else last.expand(*repeat)])
                outs.append(self._raw(runner, chunk)[:real])
            return concatenate(outs)

    def classify(self, images: Array) -> Array:
        """Per-image float32 logits. Shapes: ``(N, C, H, W) -> (N, K)``, N >= 1 (any N)."""
        if images.ndim != 4:
            raise ShapeError(f"expected a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
        return run_folded(self.folded, images, self.fold)

    __call__ = classify


def check_call(runner: Runner, example: Any,
               errors: tuple[type[BaseException], ...] = (RuntimeError,)) -> None:
    """Run once so a missing kernel is a :class:`BackendUnavailable`, not a crash in a timed loop. ``errors``:
    what the engine raises for a kernel it cannot run (RuntimeError covers NotImplementedError and
    dynamo/inductor failures)."""
    try:
        out = runner.to_tensor(runner.run(runner.prepare_input(example)))
    except errors as exc:
        raise BackendUnavailable(first_line(exc)) from exc
    if out.shape[0] != example.shape[0]:
        raise BackendUnavailable(f"returned {out.shape[0]} rows for {example.shape[0]} inputs")


class Backend:
    """One way of running a model. Subclasses set the class attributes and implement :meth:`build`
    (and :meth:`available` for their own requirements); :meth:`prepare` does the rest."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    static_shapes: ClassVar[bool] = False  # True: one preparation per input shape (compilation, graph capture)
    quantizes: ClassVar[bool] = False  # True: quantizes int8 itself (the one list of quantizing engines)
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")  # device types it runs on
    # False: another engine with its own threads runs the model, and PyTorch only prepares the input, on one
    # thread, so its idle threads do not spin on the cores the engine needs
    torch_runs_model: ClassVar[bool] = True

    def available(self, device: torch.device, precision: str) -> tuple[bool, str]:
        """The backend's own requirements (installed packages, supported precisions); shared checks come first."""
        return True, ""

    def build(self, model: nn.Module, example: torch.Tensor, engine: Engine, fold: int) -> Runner:
        """The one-off work (cast, export, compile, capture) for inputs shaped like ``example``
        ``(G, f*C, H, W)`` on ``engine``'s device at its precision; never changes ``model``."""
        raise NotImplementedError

    def call_errors(self) -> tuple[type[BaseException], ...]:
        """The exception types this engine raises for a graph or kernel it cannot run."""
        return (RuntimeError,)

    def is_available(self, device: str | torch.device = "cpu", precision: str = "fp32") -> tuple[bool, str]:
        """``(ok, reason)``: the shared checks (device type, precision, int8 needs a quantizing engine,
        CUDA present, bf16 on this GPU), then :meth:`available`."""
        dev = torch.device(device)
        precision_dtype(precision)
        if dev.type not in self.devices:
            return False, f"the {self.name} backend runs on {' or '.join(self.devices)}; use --device {self.devices[0]}"
        if is_quantized(precision) and not self.quantizes:
            return False, (f"{precision} is post-training quantization by an engine; use a backend of "
                           f"{', '.join(quantizing_backends())}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            return False, "CUDA is not available on this machine; use --device cpu"
        if dev.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
            return False, "this GPU has no bf16 support"
        return self.available(dev, precision)

    def prepare(self, model: nn.Module, example: torch.Tensor, engine: Engine, *, fold: int | None = None,
                partial_batches: bool = False) -> Prepared:
        """A runner of ``model`` on ``engine`` for inputs shaped like ``example`` ``(G, f*C, H, W)``.

        ``fold`` defaults to the model's own (``model.config.fold``, 1 for a plain module).
        ``partial_batches``: a static-shape backend is also built for :func:`partial_shapes` of G, for
        callers whose calls vary in size (a server, a live watcher); dynamic-shape backends ignore it.
        """
        ok, reason = self.is_available(engine.device, engine.precision)
        if not ok:
            raise BackendUnavailable(reason)
        f = model_fold(model) if fold is None else fold
        started = time.perf_counter()
        sizes = partial_shapes(int(example.shape[0])) if partial_batches and self.static_shapes else []
        with torch_threads(engine.threads):
            runner = self.build(model, example, engine, f)
            smaller = {size: self.build(model, example[:size], engine, f) for size in sizes}
        return finish(engine, runner, example, fold=f, static=self.static_shapes, started=started,
                      errors=self.call_errors(), smaller=smaller)


def partial_shapes(inputs: int) -> list[int]:
    """The smaller static shapes of a runner prepared for ``inputs`` folded inputs whose calls vary in size:
    the powers of two below ``inputs``. A call runs at the smallest shape that holds it, so its padding never
    doubles it, at the cost of one more build per shape (OpenVINO: about 0.03 s each). ``16 -> [1, 2, 4, 8]``."""
    return [1 << k for k in range(max(inputs - 1, 0).bit_length())]


def finish(engine: Engine, runner: Runner, example: torch.Tensor, *, fold: int, static: bool, started: float,
           errors: tuple[type[BaseException], ...] = (RuntimeError,), smaller: dict[int, Runner] | None = None
           ) -> Prepared:
    """The end of every preparation: the check call of every runner under the engine's threads, then the
    complete :class:`Prepared` (static-shape runners keep ``example``'s folded-input count, and ``smaller``
    the runners of smaller shapes, by folded-input count), timed from ``started``."""
    with torch_threads(engine.threads):
        check_call(runner, example, errors)
        for size, extra in (smaller or {}).items():
            check_call(extra, example[:size], errors)
    return Prepared(engine, runner, fold=fold, static_inputs=int(example.shape[0]) if static else None,
                    setup_seconds=time.perf_counter() - started, smaller=smaller)


# -- the registry: name -> backend, in registration order ---------------------------------------------------

BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend | type[Backend]) -> Any:
    """Register ``backend`` (an instance, or a class to instantiate; usable as a class decorator) under its
    ``name``, so every entry point (``Engine``, bench, tune, predict, serve, the CLI) can use it. A name
    taken already is a :class:`ConfigError`. Returns what it was given."""
    instance = backend() if isinstance(backend, type) else backend
    if not instance.name:
        raise ConfigError(f"{type(instance).__name__} has no name; set the class attribute name")
    if instance.name in BACKENDS:
        raise ConfigError(f"a backend named {instance.name!r} is registered already")
    BACKENDS[instance.name] = instance
    return backend


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}{did_you_mean(name, BACKENDS)}")
    return BACKENDS[name]


def quantizing_backends() -> list[str]:
    """The registered backends that quantize int8 themselves."""
    return [name for name, b in BACKENDS.items() if b.quantizes]


def torch_model(model: nn.Module, device: torch.device, precision: str, channels_last: bool) -> nn.Module:
    """A cast copy of ``model``: preparing never changes the caller's module."""
    model = copy.deepcopy(model).to(device=device, dtype=precision_dtype(precision)).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def torch_input(device: torch.device, precision: str, channels_last: bool) -> Callable[[torch.Tensor], Any]:
    dtype = precision_dtype(precision)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def prepare_input(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)

    return prepare_input
