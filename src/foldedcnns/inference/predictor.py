"""``Predictor``: classify frames with a checkpoint, folding them in groups of f.

Example::

    from foldedcnns.inference import Predictor

    predictor = Predictor("runs/lol-f4/best.pt")          # any fold; device="cuda" on a GPU
    preds = predictor.predict(frames)                      # HxWx3 RGB uint8 arrays, any size
    for name, score in zip(preds.names, preds.scores):
        print(name, f"{score:.3f}")

Grouping rule: image ``i`` is folded with the images of its group ``i // f`` (counted from the
first image passed to the call); the last, partial group is padded by repeating its own images
(:func:`foldedcnns.core.pad_to_multiple`) and the padded rows are dropped. A prediction therefore
depends only on its own group, never on the batch size, and every image passed in gets exactly one prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldedcnns.core.folding import batch_or_default
from foldedcnns.data.crop import Crop
from foldedcnns.errors import ConfigError, ShapeError
from foldedcnns.inference.preprocess import stack_frames
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime import model_from_checkpoint, prepare_model, resolve_device, to_model_input
from foldedcnns.runtime.backends import Calibration, get_backend, is_quantized, required_calibration
from foldedcnns.runtime.backends.openvino import is_ir_path, prepare_ir, read_ir

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
    def concatenate(cls, parts: Sequence[Predictions], class_names: tuple[str, ...]) -> Predictions:
        if not parts:
            k = len(class_names)
            return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, k), np.float32), class_names)
        return cls(np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.probabilities for p in parts]), class_names)


class Predictor:
    """Classify images with the model of a checkpoint (original or folded).

    ``checkpoint`` is a path or a loaded checkpoint dict, or an OpenVINO IR ``.xml`` written by
    ``foldedcnns export --format openvino`` (run by OpenVINO at the precision it was exported in).
    ``backend`` and ``precision`` pick how the folded model runs: the runtime's backends
    (:mod:`foldedcnns.runtime.backends`: eager, channels-last, compile, onnxruntime, cuda-graphs,
    openvino), so prediction runs a model exactly as it was measured. ``int8`` (openvino, onnxruntime)
    is calibrated on ``calibration`` images, or on up to 300 images of ``data``'s train (else val)
    split. ``batch_size`` is the number of images per model call, a multiple of the fold.
    """

    def __init__(self, checkpoint: str | Path | dict[str, Any], *, device: str | torch.device = "cpu",
                 backend: str = "eager", precision: str = "fp32", batch_size: int | None = None,
                 data: str | Path | None = None, calibration: Calibration | None = None) -> None:
        self.device = resolve_device(device)
        ir = is_ir_path(checkpoint)
        model, config = (None, read_ir(checkpoint)[1]) if ir else model_from_checkpoint(checkpoint)
        self.config: ModelConfig = config
        self.fold = config.fold
        self.batch_size = batch_or_default(batch_size, self.fold, DEFAULT_BATCH_IMAGES)
        _, self.height, self.width = config.image_size
        if ir:
            if self.device.type != "cpu":
                raise ConfigError(f"an OpenVINO IR runs on the CPU; drop --device {self.device}")
            self._runner, _ = prepare_ir(checkpoint, folded_inputs=self.batch_size // self.fold)
            self.backend, self.precision = self._runner.backend, self._runner.precision
            return
        self.backend, self.precision = backend, precision
        runner = get_backend(backend)
        if is_quantized(precision):
            runner = runner.calibrated(required_calibration(precision, config.task, data, calibration))
        self._runner = prepare_model(model, backend=runner, precision=precision, device=self.device,
                                     batch_images=self.batch_size)

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
        if x.dim() != 4 or tuple(x.shape[2:]) != self.input_hw:
            raise ShapeError(f"expected a batch (N, C, {self.height}, {self.width}), got {tuple(x.shape)}; "
                             "use predict() to resize images to the model's input")
        return self._runner.classify(x.to(self.device))

    def predict_batch(self, images: np.ndarray) -> Predictions:
        """Classify a uint8 batch ``(N, H, W, 3)`` already at the model's size, in one model call."""
        if len(images) == 0:
            return Predictions.concatenate([], self.class_names)
        logits = self.logits(to_model_input(images, self.config.task, self.device))
        probabilities = torch.softmax(logits.float(), dim=1)
        scores, labels = probabilities.max(dim=1)
        return Predictions(labels.cpu().numpy().astype(np.int64), scores.cpu().numpy(),
                           probabilities.cpu().numpy(), self.class_names)

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
