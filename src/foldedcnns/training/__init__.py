"""Training: config and plan, the epoch loop, callbacks, evaluation, recipes, curriculum, slot warm-up,
distillation and sweeps. Entry points: :mod:`foldedcnns.training.trainer` (``train``, ``evaluate``)."""
