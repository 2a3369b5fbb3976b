"""The runtime tier: everything that runs a model, below training, benchmark, inference and serving.

* :mod:`~foldedcnns.runtime.engine`: :class:`Engine`, the one value that says how a model runs (backend,
  precision, device, threads, calibration), and ``engine.prepare(model, batch_images) -> Prepared``.
* :mod:`~foldedcnns.runtime.backends`: the backend registry (eager, channels-last, compile, onnxruntime,
  cuda-graphs, openvino, openvino-streams) behind ``Backend.prepare``; :class:`Prepared` pads, folds,
  runs and unfolds.
* :mod:`~foldedcnns.runtime.checkpoint`: checkpoint save/load (``weights_only=True``) and model rebuild.
* :mod:`~foldedcnns.runtime.device`: the one ``--device`` rule (``resolve_device``).
* :mod:`~foldedcnns.runtime.threads`: ``torch_threads``.
"""

from foldedcnns.data.calibration import Calibration
from foldedcnns.data.model_input import to_model_input
from foldedcnns.runtime.backends import BACKENDS, Backend, BackendUnavailable, Prepared, Runner
from foldedcnns.runtime.backends.base import get_backend, register_backend
from foldedcnns.runtime.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from foldedcnns.runtime.device import DEVICE_CHOICES, DEVICE_HELP, resolve_device
from foldedcnns.runtime.engine import DEFAULT_BACKENDS, Engine, default_backends
from foldedcnns.runtime.threads import torch_threads

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "DEVICE_CHOICES",
    "DEVICE_HELP",
    "Backend",
    "BackendUnavailable",
    "Calibration",
    "Engine",
    "Prepared",
    "Runner",
    "default_backends",
    "get_backend",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "register_backend",
    "resolve_device",
    "save_checkpoint",
    "to_model_input",
    "torch_threads",
]
