"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``.

A checkpoint is a dict of plain Python values and tensors::

    {
      "format": "foldedcnns-checkpoint", "format_version": 1, "library_version": "0.1.0",
      "model_config": ModelConfig.to_dict(),   # task description, fold, multiplier, compound phi
      "state_dict": {...},                     # model weights
      "epoch": int | None, "metrics": {...},   # optional
      "train_state": {...},                    # optional: optimizer, scheduler, curriculum, RNG
    }

The task description inside holds class names, input size and normalisation, so evaluate, bench,
predict, export and serve need nothing but the file. Older checkpoints may also hold a
``preprocessing`` entry; it is ignored (the task description is the one source of normalisation).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foldedcnns import __version__
from foldedcnns.errors import DataError, first_line
from foldedcnns.models.registry import ModelConfig, build_from_config
from foldedcnns.utils.atomic import atomic_save

FORMAT = "foldedcnns-checkpoint"
FORMAT_VERSION = 1
# How torch.load(weights_only=True) words a refusal; its advice to turn the check off is never shown.
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
FORBIDDEN_GLOBAL = "Unsupported global"


def make_checkpoint(model: nn.Module, config: ModelConfig | None = None, **fields: Any) -> dict[str, Any]:
    """Assemble a checkpoint dict for ``model`` (its ``model.config`` unless ``config`` is given)."""
    config = config or getattr(model, "config", None)
    if config is None:
        raise ValueError("model has no .config; build it with foldedcnns.build_model or pass config=")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
            "model_config": config.to_dict(), "state_dict": state, **fields}


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    atomic_save(path, lambda tmp: torch.save(checkpoint, tmp))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; bad files give one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; pass the .pt file written by 'foldedcnns train'")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise DataError(_refusal(path, exc)) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path} is not a foldedcnns checkpoint; pass a file written by 'foldedcnns train'")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise DataError(f"{path} was written by a newer foldedcnns ({data.get('library_version')}); upgrade")
    return data


def _refusal(path: Path, exc: Exception) -> str:
    """The one-line message for a file that ``torch.load(weights_only=True)`` could not read."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and WEIGHTS_ONLY_REFUSAL in text:
        # "Unsupported global: GLOBAL m.x ..." or, for os.system and the like, "unsupported GLOBAL m.x whose
        # module m is blocked": match without case
        if FORBIDDEN_GLOBAL.lower() in text.lower():
            return (f"checkpoint {path} contains objects that are not plain tensors and data; it was not loaded "
                    "(it may run code); pass a checkpoint written by 'foldedcnns train'")
        detail = next((line.strip() for line in text.splitlines() if "Unsupported" in line), "unknown content")
        return (f"cannot read checkpoint {path}: it is not a plain torch.save file ({detail}); pass a checkpoint "
                "written by 'foldedcnns train'")
    return f"cannot read checkpoint {path}: {first_line(exc)}"


def model_from_checkpoint(checkpoint: dict[str, Any] | str | Path,
                          map_location: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model of a checkpoint (a dict or a path), load its weights, put it in eval mode."""
    data = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint, map_location)
    config = ModelConfig.from_dict(data["model_config"])
    model = build_from_config(config)
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as exc:
        raise DataError(f"checkpoint weights do not fit task {config.task.name} at fold {config.fold}") from exc
    model.config = config
    return model.eval(), config
