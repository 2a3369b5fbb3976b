"""OpenVINO IR export of a checkpoint's model (``foldedcnns export --format openvino``).

The IR (``NAME.xml`` + ``NAME.bin``) is the folded model exactly as the ``openvino`` backend converts
it (:func:`foldedcnns.runtime.backends.openvino.convert_openvino`): input ``(batch, f*C, H, W)``
(``batch`` dynamic; rows folded and normalised as in the ONNX export, :mod:`foldedcnns.inference.export`),
output ``(batch, f*K)``; the :class:`ModelConfig` and the precision are stored in its ``rt_info``, so
``Predictor("NAME.xml")`` and ``foldedcnns predict NAME.xml`` run it. ``fp16`` stores fp16 weights;
``int8`` is quantized by NNCF, calibrated on a data set's train (else val) split.

Both files are written in a temporary folder beside ``out``, checked, then renamed (the ``.bin``
first); an existing ``out`` is refused unless ``overwrite``. The check compares OpenVINO with PyTorch
on random folded inputs: fp32 must agree within the tolerance; for fp16 and int8 the largest
difference and the top-1 agreement are reported.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foldedcnns.errors import ConfigError, DataError
from foldedcnns.inference.export import (
    BATCH_AXIS_SIZE,
    CHECK_BATCHES,
    CHECK_SEED,
    CHECK_TOLERANCE,
    OPENVINO_PRECISIONS,
    ExportError,
    ExportReport,
)
from foldedcnns.inference.openvino_ir import IR_SUFFIX, prepare_ov_model, read_ir, write_ir
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime.backends import BackendUnavailable
from foldedcnns.runtime.backends.openvino import convert_openvino, quantize_openvino
from foldedcnns.runtime.backends.quantize import folded_calibration
from foldedcnns.runtime.checkpoint import model_from_checkpoint
from foldedcnns.runtime.engine import Engine
from foldedcnns.utils.outputs import check_output, describe_os_error


def check_openvino(xml: str | Path, model: nn.Module, config: ModelConfig, precision: str,
                   batches: tuple[int, ...] = CHECK_BATCHES, seed: int = CHECK_SEED) -> tuple[float, float]:
    """(largest |OpenVINO - PyTorch| logit, top-1 agreement per image) of the IR on random folded inputs."""
    engine = Engine("openvino", precision, "cpu")
    generator = torch.Generator().manual_seed(seed)
    worst, agree, total = 0.0, 0, 0
    k = config.task.num_classes
    saved = read_ir(xml)[0]
    model = model.eval().cpu()
    for batch in batches:
        prepared = prepare_ov_model(saved, config, engine, batch)
        x = torch.rand(batch, *config.input_shape, generator=generator)
        with torch.inference_mode():
            expected = model(x)
        got = prepared.folded(x)
        if got.shape != expected.shape:
            raise ExportError(f"OpenVINO output shape {tuple(got.shape)} differs from PyTorch's "
                              f"{tuple(expected.shape)}")
        worst = max(worst, float((got - expected).abs().max()))
        agree += int((got.reshape(-1, k).argmax(1) == expected.reshape(-1, k).argmax(1)).sum())
        total += batch * config.fold
    return worst, agree / total


def export_openvino(checkpoint: str | Path | dict[str, Any], out: str | Path, *, engine: Engine | None = None,
                    data: str | Path | None = None, check: bool = True, tolerance: float = CHECK_TOLERANCE,
                    overwrite: bool = False) -> ExportReport:
    """Export a checkpoint's model to an OpenVINO IR (``out`` ``.xml`` and its ``.bin``).

    ``engine``: an ``openvino`` engine (default ``Engine("openvino")``, fp32) whose precision the IR
    stores. ``int8`` is calibrated on the engine's ``calibration``, else on ``data`` (a data set with
    ``train/`` or ``val/``). fp32 that differs from PyTorch by more than ``tolerance`` is an
    :class:`ExportError` and nothing is written.
    """
    engine = engine or Engine("openvino")
    if engine.backend != "openvino" or engine.device != "cpu":
        raise ConfigError(f"an OpenVINO IR is written by the openvino engine on the CPU, got {engine}")
    precision = engine.precision
    if precision not in OPENVINO_PRECISIONS:
        raise ConfigError(f"an OpenVINO IR is {', '.join(OPENVINO_PRECISIONS)}, got --precision {precision!r}")
    xml = check_output(out, overwrite=overwrite)
    if xml.suffix != IR_SUFFIX:
        raise ConfigError(f"--out of an OpenVINO IR is the .xml file (the .bin goes beside it), got {xml}")
    check_output(xml.with_suffix(".bin"), overwrite=overwrite)
    ok, reason = engine.is_available()
    if not ok:
        raise ConfigError(f"cannot export to OpenVINO {precision}: {reason}")
    model, config = model_from_checkpoint(checkpoint)
    calibration = engine.for_deployment(config.task, data).calibration if engine.quantized else None
    started = time.perf_counter()
    example = torch.rand(2, *config.input_shape, generator=torch.Generator().manual_seed(CHECK_SEED))
    try:
        ov_model = convert_openvino(model, example)
        if calibration is not None:
            ov_model = quantize_openvino(ov_model, folded_calibration(calibration, example, config.fold))
    except BackendUnavailable as exc:
        raise ExportError(f"OpenVINO export of {config.name} failed: {exc}") from exc
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{xml.name}.", dir=xml.parent) as tmp:
            tmp_xml = write_ir(ov_model, Path(tmp) / f"model{IR_SUFFIX}", config, precision)
            seconds = time.perf_counter() - started
            diff, agreement = check_openvino(tmp_xml, model, config, precision) if check else (None, None)
            if precision == "fp32" and diff is not None and diff > tolerance:
                raise ExportError(f"OpenVINO differs from PyTorch by {diff:.3g} (> {tolerance:g}) on random "
                                  f"input; {xml} was not written")
            size = tmp_xml.stat().st_size + tmp_xml.with_suffix(".bin").stat().st_size
            os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
            os.replace(tmp_xml, xml)
    except OSError as exc:
        raise DataError(describe_os_error(exc, xml)) from exc
    return ExportReport(str(xml), config.name, config.fold, (BATCH_AXIS_SIZE, *config.input_shape),
                        (BATCH_AXIS_SIZE, config.fold * config.task.num_classes), 0, size, seconds, diff,
                        CHECK_BATCHES if check else (), "openvino", precision,
                        None if precision == "fp32" else agreement,
                        calibration.source if calibration is not None else None)
