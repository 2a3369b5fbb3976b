"""The folding core: pure shape maps, the one padding and batch-rounding rule, and fold/run/unfold."""

from foldedcnns.core.folding import (
    FoldedClassifier,
    batch_or_default,
    eval_order,
    fold,
    pad_to_multiple,
    round_batch,
    run_folded,
    unfold,
    unfold_logits,
)

__all__ = [
    "FoldedClassifier", "batch_or_default", "eval_order", "fold", "pad_to_multiple", "round_batch", "run_folded",
    "unfold", "unfold_logits",
]
