"""``Predictor``: classify frames with a checkpoint, folding them in groups of f.

Example::

    from foldedcnns.inference import Predictor

    predictor = Predictor("runs/lol-f4/best.pt")          # any fold; eager fp32 on the CPU
    preds = predictor.predict(frames)                      # HxWx3 RGB uint8 arrays, any size
    for name, score in zip(preds.names, preds.scores):
        print(name, f"{score:.3f}")

    from foldedcnns.runtime import Engine
    Predictor("best.pt", engine=Engine("onnxruntime", device="cpu"))
    Predictor("best.pt", engine=Engine("openvino", "int8"), data="data/lol")   # int8 calibrated on data/lol/train

Grouping rule: image ``i`` is folded with the images of its group ``i // f`` (counted from the
first image passed to the call); the last, partial group is padded by repeating its own images
(:func:`foldedcnns.core.pad_to_multiple`) and the padded rows are dropped. A prediction therefore
depends only on its own group, never on the batch size, and every image passed in gets exactly one prediction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldedcnns.core.folding import Array, batch_or_default
from foldedcnns.data.crop import Crop
from foldedcnns.data.model_input import to_model_input
from foldedcnns.errors import ConfigError, ShapeError
from foldedcnns.inference.openvino_ir import is_ir_path, prepare_ov_model, read_ir
from foldedcnns.inference.preprocess import stack_frames
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime.backends.base import RunsOnEngine
from foldedcnns.runtime.checkpoint import load_checkpoint, model_from_checkpoint
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads

# Images per model call when the caller does not choose (rounded up to a multiple of the fold).
DEFAULT_BATCH_IMAGES = 256


@dataclass(frozen=True)
class Predictions:
    """Per-image results of one call, in input order.

    ``labels`` (N,) int64 class indices, ``scores`` (N,) float32 softmax probability of that class,
    ``probabilities`` (N, K) float32, ``class_names`` the task's K names.
    """

    labels: np.ndarray
    scores: np.ndarray
    probabilities: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def names(self) -> list[str]:
        """Class name of each prediction."""
        return [self.class_names[i] for i in self.labels.tolist()]

    @classmethod
    def from_logits(cls, logits: np.ndarray | torch.Tensor, class_names: tuple[str, ...]) -> Predictions:
        """Softmax of per-image logits ``(N, K)`` (any float dtype, any device), each row's largest
        probability its score and its index its label (the first of equal ones)."""
        if isinstance(logits, torch.Tensor):
            logits = logits.detach().float().cpu().numpy()
        logits = np.asarray(logits, np.float32)
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        labels = probabilities.argmax(axis=1)
        return cls(labels.astype(np.int64), probabilities[np.arange(len(labels)), labels], probabilities,
                   class_names)

    @classmethod
    def concatenate(cls, parts: Sequence[Predictions], class_names: tuple[str, ...]) -> Predictions:
        if not parts:
            k = len(class_names)
            return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, k), np.float32), class_names)
        return cls(np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.probabilities for p in parts]), class_names)


class Predictor(RunsOnEngine):
    """Classify images with the model of a checkpoint (original or folded).

    ``checkpoint`` is a path or a loaded checkpoint dict, or an OpenVINO IR ``.xml`` written by
    ``foldedcnns export --format openvino`` (run by OpenVINO on the CPU at the precision it was exported
    in, with the engine's ``threads``). ``engine`` (default ``Engine()``: eager fp32 on the CPU) picks how
    the folded model runs, with the runtime's backends (:mod:`foldedcnns.runtime.backends`), so
    prediction runs a model exactly as it was measured. ``int8`` (openvino, onnxruntime) is calibrated
    on the engine's ``calibration``, else on up to 300 images of ``data``'s train (else val) split.
    ``batch_size`` is the number of images per model call, a multiple of the fold. ``partial_batches``:
    calls of fewer images are common (a server's or a live watcher's batches), so an engine compiled
    for static shapes is also compiled for smaller batches instead of padding every call to
    ``batch_size`` (:meth:`Engine.prepare`).
    """

    def __init__(self, checkpoint: str | Path | dict[str, Any], *, engine: Engine | None = None,
                 batch_size: int | None = None, data: str | Path | None = None,
                 partial_batches: bool = False) -> None:
        engine = Engine() if engine is None else engine
        ir = read_ir(checkpoint) if is_ir_path(checkpoint) else None  # (ov.Model, config, precision)
        model, config = (None, ir[1]) if ir is not None else model_from_checkpoint(checkpoint)
        self.config: ModelConfig = config
        self.fold = config.fold
        self.batch_size = batch_or_default(batch_size, self.fold, DEFAULT_BATCH_IMAGES)
        _, self.height, self.width = config.image_size
        if ir is None:
            self._runner = engine.for_deployment(config.task, data).prepare(model, self.batch_size,
                                                                            partial_batches=partial_batches)
        else:
            device = engine.resolved().device
            if torch.device(device).type != "cpu":
                raise ConfigError(f"an OpenVINO IR runs on the CPU; drop --device {device}")
            self._runner = prepare_ov_model(ir[0], config, Engine("openvino", ir[2], "cpu", engine.threads),
                                            self.batch_size // self.fold, partial_batches=partial_batches)
        self._pytorch_threads = self._runner.engine.pytorch_threads
        self._numpy_io = self._runner.numpy_io and self.device.type == "cpu"

    @property
    def engine(self) -> Engine:
        """The engine this predictor runs (device resolved; int8 with its calibration)."""
        return self._runner.engine

    @property
    def calibration(self) -> str | None:
        """int8: the images the engine was calibrated on."""
        return self._runner.calibration

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.config.task.class_names

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) every image is resized to."""
        return (self.height, self.width)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image float32 logits of a model-ready batch. Shapes: ``(N, C, H, W) -> (N, K)``.

        The runner pads the last partial group with its own images and, for backends compiled for
        one shape (``compile``, ``cuda-graphs``), every call to ``batch_size`` images, so they never
        compile again.
        """
        with self._threads():
            return self._classify(x)

    def _classify(self, x: Array) -> Array:
        if x.ndim != 4 or tuple(x.shape[2:]) != self.input_hw:
            raise ShapeError(f"expected a batch (N, C, {self.height}, {self.width}), got {tuple(x.shape)}; "
                             "use predict() to resize images to the model's input")
        return self._runner.classify(x if isinstance(x, np.ndarray) else x.to(self.device))

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        """PyTorch's intra-op threads around a call (:attr:`Engine.pytorch_threads`), unchanged when equal."""
        threads = self._pytorch_threads
        return contextlib.nullcontext() if threads in (None, torch.get_num_threads()) else torch_threads(threads)

    def predict_batch(self, images: np.ndarray) -> Predictions:
        """Classify a uint8 batch ``(N, H, W, 3)`` already at the model's size, in one model call."""
        if len(images) == 0:
            return Predictions.concatenate([], self.class_names)
        with self._threads(), torch.inference_mode():  # no autograd bookkeeping on any of these tensors
            x = to_model_input(images, self.config.task, self.device)
            # An engine that runs on NumPy arrays gets one (a view of x): no PyTorch call around the model's.
            logits = self._classify(x.numpy() if self._numpy_io else x)
        return Predictions.from_logits(logits, self.class_names)

    def predict(self, frames: Sequence[np.ndarray] | np.ndarray, *, crop: Crop | str | None = None) -> Predictions:
        """Classify RGB uint8 images ``(H, W, 3)`` of any size (a list, or one ``(N, H, W, 3)`` array).

        Each image is cropped (``crop``: a :class:`Crop` or ``"x,y,w,h"``), resized to the model's input
        and normalised; images run in batches of ``batch_size`` and come back in input order.
        """
        crop = Crop.parse(crop) if isinstance(crop, str) else crop
        parts = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            parts.append(self.predict_batch(stack_frames(chunk, self.height, self.width, crop)))
        return Predictions.concatenate(parts, self.class_names)


def deployment_engine(checkpoint: str | Path | dict[str, Any], engine: Engine | None = None,
                      data: str | Path | None = None) -> Engine:
    """``engine`` (default ``Engine()``) as deployed for ``checkpoint``: int8 calibrated on the checkpoint's
    task's images from ``data`` (:meth:`Engine.for_deployment`), so an entry point that builds its own
    :class:`Predictor` (``run_predict``, ``run_ray_predict``) is handed a complete engine. The checkpoint is
    read only for an int8 engine without calibration; an OpenVINO IR keeps the precision it was exported in."""
    engine = Engine() if engine is None else engine
    if not engine.quantized or engine.calibration is not None or is_ir_path(checkpoint):
        return engine
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    return engine.for_deployment(ModelConfig.from_dict(ckpt["model_config"]).task, data)
