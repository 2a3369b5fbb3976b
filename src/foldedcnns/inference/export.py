"""ONNX export of a checkpoint's model, checked against PyTorch with ONNX Runtime.

The exported graph is the folded model itself: input ``input`` of shape ``(batch, f*C, H, W)``
(``batch`` dynamic; row ``n`` holds images ``n*f .. n*f+f-1`` stacked along channels, already
scaled and normalised) and output ``logits`` of shape ``(batch, f*K)`` (block ``j`` belongs to image
``j`` of the row). The task description, fold and class names are stored in the model's metadata
(``metadata_props``: ``foldedcnns.model_config`` as JSON), so the file describes itself.

Weights are embedded in the one ``.onnx`` file (no side ``.data`` file): the models here are far
below protobuf's 2 GB limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foldedcnns.errors import ConfigError, FoldedCNNsError
from foldedcnns.models.registry import ModelConfig
from foldedcnns.training.checkpoint import model_from_checkpoint
from foldedcnns.utils.atomic import atomic_save

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
# Stands for the dynamic batch axis in reported shapes.
BATCH_AXIS_SIZE = -1
METADATA_KEY = "foldedcnns.model_config"
# Folded batch sizes the ONNX Runtime check runs (two, to exercise the dynamic batch axis).
CHECK_BATCHES = (1, 3)
# Largest |ORT - PyTorch| accepted for float32 logits.
CHECK_TOLERANCE = 1e-4
CHECK_SEED = 0
FORMATS = ("onnx",)


class ExportMismatchError(FoldedCNNsError):
    """ONNX Runtime's output differs from PyTorch's beyond the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    """Where the model went and how closely ONNX Runtime reproduces PyTorch."""

    path: str
    task: str
    fold: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    opset: int
    size_bytes: int
    export_seconds: float
    max_abs_diff: float | None
    check_batches: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, deprecations); errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_model_onnx(model: nn.Module, config: ModelConfig, path: str | Path, *,
                      opset: int | None = None) -> Path:
    """Export ``model`` (a folded CNN on CPU) to ``path`` with a dynamic batch axis, atomically.

    Shapes: input ``(batch, f*C, H, W)`` -> output ``(batch, f*K)``. Returns ``path``.
    """
    import onnx

    path = Path(path)
    example = torch.rand(2, *config.input_shape)
    model = model.eval().cpu()

    def write(tmp: Path) -> None:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False, opset_version=opset,
                              verbose=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS, min=1)},))
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(config.to_dict())
        onnx.save(proto, str(tmp))

    atomic_save(path, write)
    return path


def ort_session(path: str | Path, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime session whose idle threads do not spin (so PyTorch in the same process is not slowed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def check_onnx(path: str | Path, model: nn.Module, config: ModelConfig,
               batches: tuple[int, ...] = CHECK_BATCHES, seed: int = CHECK_SEED) -> float:
    """Largest absolute difference between ONNX Runtime and PyTorch logits on random folded inputs."""
    session = ort_session(path)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.eval().cpu()
    for batch in batches:
        x = torch.rand(batch, *config.input_shape, generator=generator)
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportMismatchError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


def read_onnx_config(path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in an exported file's metadata."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return ModelConfig.from_dict(json.loads(entry.value))
    raise ConfigError(f"{path} has no foldedcnns metadata; export it with 'foldedcnns export'")


def export_onnx(checkpoint: str | Path | dict[str, Any], out: str | Path, *, opset: int | None = None,
                check: bool = True, tolerance: float = CHECK_TOLERANCE) -> ExportReport:
    """Export a checkpoint's model to ONNX and (``check``) compare ONNX Runtime with PyTorch.

    Raises :class:`ExportMismatchError` when the difference exceeds ``tolerance``.
    """
    model, config = model_from_checkpoint(checkpoint)
    started = time.perf_counter()
    path = export_model_onnx(model, config, out, opset=opset)
    seconds = time.perf_counter() - started
    diff = check_onnx(path, model, config) if check else None
    import onnx

    opset_used = next((o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")), 0)
    report = ExportReport(str(path), config.name, config.fold, (BATCH_AXIS_SIZE, *config.input_shape),
                          (BATCH_AXIS_SIZE, config.fold * config.task.num_classes), int(opset_used),
                          path.stat().st_size, seconds, diff, CHECK_BATCHES if check else ())
    if diff is not None and diff > tolerance:
        raise ExportMismatchError(f"ONNX Runtime differs from PyTorch by {diff:.3g} (> {tolerance:g}) on random input; "
                                  f"the exported {path} is kept for inspection, try another --opset")
    return report

