"""``prepare_model``: a model ready to classify batches of a given size, on any backend.

The common path of Predictor, evaluation, distillation's teacher and tune's accuracy check: check
that the backend runs here, build the example folded input for ``batch_images`` images, prepare.
"""

from __future__ import annotations

import torch
from torch import nn

from foldedcnns.core.folding import round_batch
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import Backend, Prepared, get_backend
from foldedcnns.runtime.backends.base import model_fold


def prepare_model(model: nn.Module, *, backend: str | Backend = "eager", precision: str = "fp32",
                  device: str | torch.device = "cpu", batch_images: int = 256, fold: int | None = None,
                  input_shape: tuple[int, int, int] | None = None) -> Prepared:
    """A :class:`Prepared` runner of ``model`` for calls of ``batch_images`` images (rounded up to a multiple
    of the fold). ``input_shape`` ``(f*C, H, W)`` defaults to ``model.config.input_shape``. A backend that
    cannot run here is a one-line :class:`ConfigError`."""
    runner = get_backend(backend) if isinstance(backend, str) else backend
    device = torch.device(device)
    f = model_fold(model) if fold is None else fold
    ok, reason = runner.is_available(device, precision)
    if not ok:
        raise ConfigError(f"backend {runner.name} cannot run {precision} on {device.type} here: {reason}")
    if input_shape is None:
        config = getattr(model, "config", None)
        if config is None:
            raise ConfigError("model has no .config; build it with foldedcnns.build_model or pass input_shape=")
        input_shape = tuple(config.input_shape)
    groups = round_batch(batch_images, f, "up") // f
    example = torch.rand(groups, *input_shape, generator=torch.Generator().manual_seed(0))
    return runner.prepare(model, example, precision=precision, device=device, fold=f)
