"""Training: trainer, recipes, curriculum learning, distillation, sweeps and checkpoints."""
