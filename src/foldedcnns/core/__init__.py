"""The folding core: pure shape maps and the wrapper that folds any batch."""

from foldedcnns.core.folding import (
    FoldedClassifier,
    fold,
    group_count,
    pad_to_multiple,
    unfold,
    unfold_logits,
)

__all__ = ["FoldedClassifier", "fold", "group_count", "pad_to_multiple", "unfold", "unfold_logits"]
