"""`foldedcnns export`: ONNX with a dynamic batch axis, self-describing, checked against PyTorch."""

import json

import numpy as np
import pytest
import torch

from foldedcnns.cli.main import main
from foldedcnns.inference.export import ort_session, read_onnx_config
from foldedcnns.runtime.checkpoint import model_from_checkpoint


@pytest.mark.slow  # ONNX export, check and an ONNX Runtime session: 1.5-3 s on 2 cores
def test_export_onnx_matches_pytorch_and_describes_itself(tmp_path, capsys, tiny_checkpoint):
    ckpt = tiny_checkpoint(3, task="sot/timer3")
    model, _ = model_from_checkpoint(ckpt)
    out = tmp_path / "model.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_diff"] < 1e-4 and report["input_shape"] == [-1, 9, 22, 30]
    assert report["output_shape"] == [-1, 81]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no side .data file
    config = read_onnx_config(out)
    assert config.fold == 3 and config.task.name == "sot/timer3"
    session = ort_session(out)
    x = torch.rand(5, 9, 22, 30)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, atol=1e-4)


def test_export_refuses_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["export", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
