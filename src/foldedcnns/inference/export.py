"""ONNX export of a checkpoint's model, checked against PyTorch with ONNX Runtime.

The exported graph is the folded model itself: input ``x`` of shape ``(batch, f*C, H, W)``
(``batch`` dynamic; row ``n`` holds images ``n*f .. n*f+f-1`` stacked along channels, already
scaled to [0, 1] and normalised as the task says) and output ``y`` of shape ``(batch, f*K)`` (block
``j`` of a row holds the K logits of image ``j``). The task description, fold and class names are
stored in the model's metadata (``metadata_props``: ``foldedcnns.model_config`` as JSON), so the file
describes itself. The graph is made by the benchmark's exporter
(:func:`foldedcnns.runtime.backends.export_onnx_bytes`), so ``foldedcnns export`` writes the very
graph that ``foldedcnns bench --backends onnxruntime`` times. Weights are embedded in the one
``.onnx`` file (these models are far below protobuf's 2 GB limit).

``--format openvino`` (an OpenVINO IR, ``.xml`` + ``.bin``) is :mod:`foldedcnns.inference.export_openvino`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foldedcnns.errors import ConfigError, FoldedCNNsError, first_line
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime.backends import ONNX_OPSET, OnnxRuntimeBackend, export_onnx_bytes
from foldedcnns.runtime.checkpoint import model_from_checkpoint
from foldedcnns.utils.atomic import atomic_save, pending_file
from foldedcnns.utils.outputs import check_output, partial_path

METADATA_KEY = "foldedcnns.model_config"
# Stands for the dynamic batch axis in reported shapes.
BATCH_AXIS_SIZE = -1
# Folded batch sizes the ONNX Runtime check runs (two, to exercise the dynamic batch axis).
CHECK_BATCHES = (1, 3)
# Largest |ORT - PyTorch| accepted for float32 logits.
CHECK_TOLERANCE = 1e-4
CHECK_SEED = 0
MIN_OPSET = 7  # the oldest opset ONNX Runtime still loads
FORMATS = ("onnx", "openvino")
OPENVINO_PRECISIONS = ("fp32", "fp16", "int8")


class ExportError(FoldedCNNsError):
    """The exporter failed, or ONNX Runtime's output differs from PyTorch's beyond the tolerance."""


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
    format: str = "onnx"
    precision: str = "fp32"
    agreement: float | None = None  # openvino fp16/int8: top-1 agreement with PyTorch on the checked images
    calibration: str | None = None  # int8: the images it was calibrated on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_model_onnx(model: nn.Module, config: ModelConfig, path: str | Path, *, opset: int = ONNX_OPSET) -> Path:
    """Export ``model`` (a folded CNN) to ``path`` with a dynamic batch axis and its config, atomically.

    Shapes: input ``x`` ``(batch, f*C, H, W)`` -> output ``y`` ``(batch, f*K)``. Returns ``path``.
    """
    import onnx

    path = Path(path)
    example = torch.rand(2, *config.input_shape)
    try:
        proto = onnx.load_from_string(export_onnx_bytes(model.eval().cpu(), example, opset))
    except (RuntimeError, torch.onnx.OnnxExporterError) as exc:
        raise ExportError(f"ONNX export of {config.name} failed: {first_line(exc)}; try another --opset") from exc
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(config.to_dict())
    atomic_save(path, lambda tmp: onnx.save(proto, str(tmp)))
    return path


def ort_session(path: str | Path, providers: list[str] | None = None) -> Any:
    """An ONNX Runtime session with the benchmark's options (no spinning threads)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), OnnxRuntimeBackend().session_options(),
                                providers=providers or ["CPUExecutionProvider"])


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
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape}")
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


def export_onnx(checkpoint: str | Path | dict[str, Any], out: str | Path, *, opset: int = ONNX_OPSET,
                check: bool = True, tolerance: float = CHECK_TOLERANCE, overwrite: bool = False) -> ExportReport:
    """Export a checkpoint's model to ONNX and (``check``) compare ONNX Runtime with PyTorch.

    An existing ``out`` is refused unless ``overwrite``; it is replaced only by a file that passed the
    check. Raises :class:`ExportError` when the difference exceeds ``tolerance`` (the file is kept
    as ``out.partial`` for inspection).
    """
    import onnx

    out = check_output(out, overwrite=overwrite)
    check_output(partial_path(out), overwrite=True)
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"--opset must be from {MIN_OPSET} to {newest} (this onnx), got {opset!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):  # also NaN
        raise ConfigError(f"--tolerance must be a number >= 0, got {tolerance!r}")
    model, config = model_from_checkpoint(checkpoint)
    with pending_file(out, suffix=out.suffix) as pending:
        started = time.perf_counter()
        export_model_onnx(model, config, pending.tmp, opset=opset)
        seconds = time.perf_counter() - started
        diff = check_onnx(pending.tmp, model, config) if check else None
        size = pending.tmp.stat().st_size
        if diff is not None and diff > tolerance:
            pending.final = partial_path(out)
    if diff is not None and diff > tolerance:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {diff:.3g} (> {tolerance:g}) on random input; "
                          f"the export is kept for inspection as {pending.final} ({out} was not written), "
                          "try another --opset")
    return ExportReport(str(out), config.name, config.fold, (BATCH_AXIS_SIZE, *config.input_shape),
                        (BATCH_AXIS_SIZE, config.fold * config.task.num_classes), opset,
                        size, seconds, diff, CHECK_BATCHES if check else ())
