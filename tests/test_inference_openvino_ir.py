"""OpenVINO IR files: the export writes an IR that predicts like its checkpoint; int8 needs calibration images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from foldedcnns.cli.main import main
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.inference.export_openvino import export_openvino
from foldedcnns.inference.predictor import Predictor
from foldedcnns.models import TaskSpec
from foldedcnns.runtime.engine import Engine

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


@pytest.mark.slow
@needs_openvino
def test_export_writes_an_ir_that_predicts_like_the_checkpoint(tiny_checkpoint, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(2)
    report = export_openvino(ckpt, tmp_path / "model.xml")
    assert (tmp_path / "model.xml").is_file() and (tmp_path / "model.bin").is_file()
    assert report.format == "openvino" and report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.input_shape[0] == -1 and report.fold == 2
    frames = np.random.default_rng(0).integers(0, 255, (7, 16, 20, 3), dtype=np.uint8)
    ir = Predictor(tmp_path / "model.xml", batch_size=4)
    assert (ir.backend, ir.precision, ir.fold) == ("openvino", "fp32", 2)
    np.testing.assert_allclose(ir.predict(frames).probabilities, Predictor(ckpt).predict(frames).probabilities,
                               atol=1e-5)
    with pytest.raises(DataError, match="already exists"):
        export_openvino(ckpt, tmp_path / "model.xml")
    with pytest.raises(ConfigError, match=r"\.xml"):
        export_openvino(ckpt, tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="pass --data DIR"):
        export_openvino(ckpt, tmp_path / "int8.xml", engine=Engine("openvino", "int8"))


@needs_openvino
@pytest.mark.slow
def test_export_cli_int8_with_data(tiny_checkpoint, tiny_task: TaskSpec, image_folder, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec("nncf") is None:
        pytest.skip("int8 needs nncf")
    data = image_folder(tiny_task, {"train": 6})
    out = tmp_path / "int8.xml"
    assert main(["export", str(tiny_checkpoint(1)), "--format", "openvino", "--precision", "int8", "--data",
                 str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "OpenVINO IR int8" in printed and "int8 calibrated on 18 images of" in printed
    assert Predictor(out).precision == "int8"


@pytest.mark.slow
@needs_openvino
def test_an_ir_predictor_with_partial_batches_runs_small_calls_at_their_own_shape(tiny_checkpoint,
                                                                                  tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(2)
    export_openvino(ckpt, tmp_path / "model.xml")
    frames = np.random.default_rng(1).integers(0, 255, (3, 16, 20, 3), dtype=np.uint8)
    ir = Predictor(tmp_path / "model.xml", batch_size=8, partial_batches=True)
    assert ir._runner.shapes == (1, 2, 4)
    np.testing.assert_allclose(ir.predict(frames).probabilities, Predictor(ckpt).predict(frames).probabilities,
                               atol=1e-5)
