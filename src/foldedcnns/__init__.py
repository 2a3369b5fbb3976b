"""foldedcnns: higher-throughput inference for small specialized CNNs by folding.

f images of C channels are stacked into one input of f*C channels and classified jointly by a CNN
whose hidden layers are sqrt(f) wider; the output holds f blocks of class scores, one per image.

The names below are imported on first use (PEP 562), so a process that needs only a light module
(a video decoding worker imports ``foldedcnns.data.video_segments``) does not pay for PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "FoldedCNNsError": "foldedcnns.errors",
    "FoldedClassifier": "foldedcnns.core",
    "fold": "foldedcnns.core",
    "pad_to_multiple": "foldedcnns.core",
    "unfold": "foldedcnns.core",
    "unfold_logits": "foldedcnns.core",
    "ModelConfig": "foldedcnns.models",
    "TaskSpec": "foldedcnns.models",
    "build_model": "foldedcnns.models",
    "get_task": "foldedcnns.models",
    "list_models": "foldedcnns.models",
    "load_description": "foldedcnns.models",
}

__all__ = [
    "FoldedCNNsError",
    "FoldedClassifier",
    "ModelConfig",
    "TaskSpec",
    "__version__",
    "build_model",
    "fold",
    "get_task",
    "list_models",
    "load_description",
    "pad_to_multiple",
    "unfold",
    "unfold_logits",
]

if TYPE_CHECKING:
    from foldedcnns.core import FoldedClassifier, fold, pad_to_multiple, unfold, unfold_logits
    from foldedcnns.errors import FoldedCNNsError
    from foldedcnns.models import ModelConfig, TaskSpec, build_model, get_task, list_models, load_description


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'foldedcnns' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
