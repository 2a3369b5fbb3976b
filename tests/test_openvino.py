"""The openvino backend: fp32 equals eager, static shapes, thread count, caching, availability, IR export, peak."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from foldedcnns import build_model
from foldedcnns.benchmark.peak import INT_MM_KERNEL, OPENVINO_INT8_KERNEL, measure_peak
from foldedcnns.benchmark.records import CSV_COLUMNS, REQUIRED_COLUMNS, BenchRecord, read_csv, write_csv
from foldedcnns.cli.main import main
from foldedcnns.cli.predict import model_arg
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.inference.export_openvino import export_openvino
from foldedcnns.inference.predictor import Predictor
from foldedcnns.models import TaskSpec
from foldedcnns.runtime import prepare_model
from foldedcnns.runtime.backends import (
    BACKENDS,
    DEFAULT_BACKENDS,
    OpenVinoBackend,
    OpenVinoStreamsBackend,
    available_backends,
)
from foldedcnns.runtime.backends import openvino as ov_backend
from foldedcnns.runtime.threads import torch_threads

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")


def test_openvino_is_registered_and_searched_on_the_cpu() -> None:
    assert isinstance(BACKENDS["openvino"], OpenVinoBackend)
    assert "openvino" in DEFAULT_BACKENDS["cpu"] and "openvino" not in DEFAULT_BACKENDS["cuda"]
    assert BACKENDS["openvino"].static_shapes


def test_openvino_streams_is_registered_and_chosen_by_name() -> None:
    assert isinstance(BACKENDS["openvino-streams"], OpenVinoStreamsBackend)
    assert "openvino-streams" not in DEFAULT_BACKENDS["cpu"]  # measured no faster on 2 cores: chosen by name
    assert BACKENDS["openvino-streams"].is_available("cuda", "fp32")[0] is False
    assert BACKENDS["openvino-streams"].PERFORMANCE_HINT == "THROUGHPUT"


@pytest.mark.parametrize(("inputs", "threads", "streams"), [(64, 2, 2), (7, 2, 1), (9, 4, 3), (1, 8, 1), (12, 8, 6),
                                                             (5, 1, 1)])
def test_streams_split_a_call_into_equal_parts(inputs: int, threads: int, streams: int) -> None:
    assert ov_backend.streams_for(inputs, threads) == streams


def test_missing_openvino_is_unavailable_with_one_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    for precision in ("fp32", "bf16", "int8"):
        ok, reason = BACKENDS["openvino"].is_available("cpu", precision)
        assert not ok and reason == "openvino is not installed (pip install 'foldedcnns[openvino]')"
    assert "openvino" not in available_backends("cpu")
    with pytest.raises(ConfigError, match="openvino is not installed"):
        prepare_model(build_model("lol/goldnumber-fraction", init=False), backend="openvino")


def test_missing_nncf_makes_only_int8_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    ok, reason = BACKENDS["openvino"].is_available("cpu", "int8")
    assert not ok and "nncf" in reason


def test_openvino_runs_on_the_cpu_only() -> None:
    ok, reason = BACKENDS["openvino"].is_available("cuda", "fp32")
    assert not ok and ("CPU" in reason or "not installed" in reason)


@pytest.mark.slow
@needs_openvino
@pytest.mark.parametrize("fold", [1, 2])
def test_fp32_equals_eager(tiny_digits_task: TaskSpec, fold: int) -> None:
    model = build_model(tiny_digits_task, fold=fold).eval()
    x = torch.rand(5 * fold, *model.config.image_size, generator=torch.Generator().manual_seed(1))
    prepared = prepare_model(model, backend="openvino", batch_images=4 * fold)
    eager = prepare_model(model, backend="eager", batch_images=4 * fold)
    assert prepared.static_inputs == 4 and prepared.fold == fold
    torch.testing.assert_close(prepared.classify(x), eager.classify(x), atol=1e-4, rtol=0)
    assert prepared.classify(x[:1]).shape == (1, tiny_digits_task.num_classes)  # padded to the static shape


@pytest.mark.slow
@needs_openvino
def test_fp32_equals_eager_on_a_full_size_cnn() -> None:
    model = build_model("lol/goldnumber-fraction", fold=4).eval()
    x = torch.rand(8, *model.config.input_shape, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(BACKENDS["openvino"].prepare(model, x).folded(x), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_streams_run_each_part_on_its_own_request_and_equal_one_request(tiny_task: TaskSpec, precision: str) -> None:
    model = build_model(tiny_task).eval()
    x = torch.rand(6, *model.config.input_shape, generator=torch.Generator().manual_seed(3))
    with torch_threads(2):
        streams = BACKENDS["openvino-streams"].prepare(model, x, precision=precision, calibration=x)
        single = BACKENDS["openvino"].prepare(model, x, precision=precision, calibration=x)
    compiled, *requests = streams._keep
    assert int(compiled.get_property("NUM_STREAMS")) == 2 and len(requests) == 2
    assert compiled.inputs[0].get_shape()[0] == 3  # each request runs half of the call
    out = streams.folded(x)
    torch.testing.assert_close(out, single.folded(x), atol=1e-4 if precision == "fp32" else 1e-2, rtol=0)
    if precision == "fp32":
        with torch.inference_mode():
            torch.testing.assert_close(out, model(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(streams.folded(x[:2]), out[:2])  # a smaller call is padded to the static shape
    torch.testing.assert_close(streams.folded(torch.cat([x, x])), torch.cat([out, out]))  # a larger one cut


@pytest.mark.slow
@needs_openvino
def test_threads_come_from_torch_at_prepare_time(tiny_task: TaskSpec) -> None:
    model = build_model(tiny_task).eval()
    with torch_threads(1):
        prepared = BACKENDS["openvino"].prepare(model, torch.rand(2, *model.config.input_shape))
    compiled = prepared._keep[0]
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")


@pytest.mark.slow
@needs_openvino
def test_conversion_is_cached_per_weights(tiny_task: TaskSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ov_backend.convert_openvino
    monkeypatch.setattr(ov_backend, "convert_openvino", lambda *a, **k: calls.append(1) or real(*a, **k))
    backend = OpenVinoBackend()
    model = build_model(tiny_task).eval()
    for groups in (2, 3):
        backend.prepare(model, torch.rand(groups, *model.config.input_shape))
    assert len(calls) == 1  # a new batch size only reshapes and compiles
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    x = torch.rand(2, *model.config.input_shape)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(backend.prepare(model, x).folded(x), expected, atol=1e-4, rtol=0)
    assert len(calls) == 2  # changed weights convert again


@pytest.mark.slow
@needs_openvino
def test_reduced_precisions_follow_the_cpus_capabilities(tiny_task: TaskSpec) -> None:
    capabilities = ov_backend.cpu_capabilities()
    model = build_model(tiny_task).eval()
    x = torch.rand(2, *model.config.input_shape)
    for precision, capability in (("bf16", "BF16"), ("fp16", "FP16")):
        ok, reason = BACKENDS["openvino"].is_available("cpu", precision)
        assert ok == (capability in capabilities), reason
        if ok:
            assert BACKENDS["openvino"].prepare(model, x, precision=precision).folded(x).dtype == torch.float32


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
        export_openvino(ckpt, tmp_path / "int8.xml", precision="int8")


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


def test_int8_records_count_integer_ops(tmp_path: Path) -> None:
    row = BenchRecord("m", 1, 8, "Original", 1, 10.0, 1e9, "openvino", "int8", "cpu", 8)
    assert row.ops_unit == "int8 OP/s" and row.to_row()["Ops Unit"] == "int8 OP/s"
    assert BenchRecord("m", 1, 8, "Original", 1, 10.0, 1e9, "eager", "fp32", "cpu", 8).ops_unit == "FLOP/s"
    path = write_csv(tmp_path / "r.csv", [row])
    assert path.read_text().splitlines()[0].split(",") == list(CSV_COLUMNS)
    old = tmp_path / "old.csv"  # written before the Ops Unit column
    old.write_text(",".join(REQUIRED_COLUMNS) + "\nm,1,8,Original,1,10,1e9,,,eager,fp32,cpu,,8\n")
    assert read_csv(old)[0].ops_unit == "FLOP/s"


def test_int8_peak_is_an_integer_matmul_and_says_which() -> None:
    peak = measure_peak("cpu", "int8", sizes=(64,), seconds=0.01)
    if peak.kernel == "none":
        pytest.skip("no int8 matmul here (neither torch._int_mm nor openvino)")
    assert peak.kernel in (INT_MM_KERNEL, OPENVINO_INT8_KERNEL) and peak.unit == "int8 OP/s"
    assert peak.flops_per_sec > 0 and peak.to_dict()["kernel"] == peak.kernel
    assert measure_peak("cpu", "fp32", sizes=(64,), seconds=0.01).unit == "FLOP/s"


@pytest.mark.slow
@needs_openvino
@pytest.mark.parametrize("backend", ["openvino", "openvino-streams"])
def test_predict_prepares_openvino_engines_with_the_models_share_of_the_cores(tiny_checkpoint, backend: str) -> None:
    ckpt = tiny_checkpoint()
    args = argparse.Namespace(checkpoint=str(ckpt), data=None, backend=backend, device="cpu", threads=1,
                              precision="fp32", batch_size=8)
    made = model_arg(args)
    assert isinstance(made, Predictor) and made.backend == backend
    assert model_arg(argparse.Namespace(**{**vars(args), "backend": "eager"})) == str(ckpt)  # prepared later
