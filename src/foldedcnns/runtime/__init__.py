"""The runtime layer: everything that runs a model, below training, benchmark, inference and serving.

* :mod:`~foldedcnns.runtime.backends`: eager, channels-last, compile, onnxruntime, cuda-graphs behind
  ``Backend.prepare(model, example) -> Prepared``; :class:`Prepared` pads, folds, runs and unfolds.
* :mod:`~foldedcnns.runtime.checkpoint`: checkpoint save/load (``weights_only=True``) and model rebuild.
* :mod:`~foldedcnns.runtime.device`: the one ``resolve_device``.
* :mod:`~foldedcnns.runtime.inputs`: the one ``to_model_input`` (uint8 -> normalised float).
* :mod:`~foldedcnns.runtime.threads`: ``torch_threads``.
"""

from foldedcnns.runtime.backends import (
    BACKENDS,
    DEFAULT_BACKENDS,
    PRECISIONS,
    Backend,
    BackendUnavailable,
    Prepared,
    available_backends,
    get_backend,
    precision_dtype,
)
from foldedcnns.runtime.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from foldedcnns.runtime.device import DEVICE_CHOICES, resolve_device
from foldedcnns.runtime.inputs import to_model_input
from foldedcnns.runtime.prepare import prepare_model
from foldedcnns.runtime.threads import torch_threads

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "DEVICE_CHOICES",
    "PRECISIONS",
    "Backend",
    "BackendUnavailable",
    "Prepared",
    "available_backends",
    "get_backend",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "precision_dtype",
    "prepare_model",
    "resolve_device",
    "save_checkpoint",
    "to_model_input",
    "torch_threads",
]
