"""foldedcnns: higher-throughput inference for small specialized CNNs by folding.

f images of C channels are stacked into one input of f*C channels and classified jointly by a CNN
whose hidden layers are sqrt(f) wider; the output holds f blocks of class scores, one per image.
"""

from foldedcnns.core import FoldedClassifier, fold, pad_to_multiple, unfold, unfold_logits
from foldedcnns.errors import FoldedCNNsError
from foldedcnns.models import ModelConfig, TaskSpec, build_model, get_task, list_models, load_description

__version__ = "0.1.0"

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
