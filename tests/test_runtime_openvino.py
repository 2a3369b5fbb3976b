"""The openvino backends: fp32 equals eager, static shapes, streams, thread count, caching, availability."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from foldedcnns import build_model
from foldedcnns.errors import ConfigError
from foldedcnns.models import TaskSpec
from foldedcnns.runtime.backends import (
    BACKENDS,
    OpenVinoBackend,
    OpenVinoStreamsBackend,
    available_backends,
)
from foldedcnns.runtime.backends import openvino as ov_backend
from foldedcnns.runtime.engine import DEFAULT_BACKENDS, Engine

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
        Engine("openvino").prepare(build_model("lol/goldnumber-fraction", init=False), 4)


def test_missing_nncf_makes_only_int8_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    ok, reason = BACKENDS["openvino"].is_available("cpu", "int8")
    assert not ok and "nncf" in reason


def test_openvino_runs_on_the_cpu_only() -> None:
    ok, reason = BACKENDS["openvino"].is_available("cuda", "fp32")
    assert not ok and ("runs on cpu; use --device cpu" in reason or "not installed" in reason)


@pytest.mark.slow
@needs_openvino
@pytest.mark.parametrize("fold", [1, 2])
def test_fp32_equals_eager(tiny_digits_task: TaskSpec, fold: int) -> None:
    model = build_model(tiny_digits_task, fold=fold).eval()
    x = torch.rand(5 * fold, *model.config.image_size, generator=torch.Generator().manual_seed(1))
    prepared = Engine("openvino").prepare(model, 4 * fold)
    eager = Engine().prepare(model, 4 * fold)
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
    prepared = BACKENDS["openvino"].prepare(model, x, Engine("openvino"))
    torch.testing.assert_close(prepared.folded(x), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_streams_run_each_part_on_its_own_request_and_equal_one_request(tiny_task: TaskSpec, precision: str) -> None:
    model = build_model(tiny_task).eval()
    x = torch.rand(6, *model.config.input_shape, generator=torch.Generator().manual_seed(3))
    streams = BACKENDS["openvino-streams"].prepare(model, x, Engine("openvino-streams", precision, threads=2,
                                                                    calibration=x))
    single = BACKENDS["openvino"].prepare(model, x, Engine("openvino", precision, threads=2, calibration=x))
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
def test_threads_come_from_the_engine(tiny_task: TaskSpec) -> None:
    model = build_model(tiny_task).eval()
    prepared = Engine("openvino", threads=1).prepare(model, 2)
    compiled = prepared._keep[0]
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    assert compiled.get_property("ENABLE_CPU_PINNING") is False  # no affinity calls around each inference


@pytest.mark.slow
@needs_openvino
def test_conversion_is_cached_per_weights(tiny_task: TaskSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ov_backend.convert_openvino
    monkeypatch.setattr(ov_backend, "convert_openvino", lambda *a, **k: calls.append(1) or real(*a, **k))
    backend = OpenVinoBackend()
    model = build_model(tiny_task).eval()
    for groups in (2, 3):
        backend.prepare(model, torch.rand(groups, *model.config.input_shape), Engine("openvino"))
    assert len(calls) == 1  # a new batch size only reshapes and compiles
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    x = torch.rand(2, *model.config.input_shape)
    with torch.inference_mode():
        expected = model(x)
    torch.testing.assert_close(backend.prepare(model, x, Engine("openvino")).folded(x), expected, atol=1e-4, rtol=0)
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
            prepared = BACKENDS["openvino"].prepare(model, x, Engine("openvino", precision))
            assert prepared.folded(x).dtype == torch.float32


@pytest.mark.slow
@needs_openvino
def test_partial_batches_compile_the_smaller_shapes_and_give_the_same_logits(tiny_task: TaskSpec) -> None:
    model = build_model(tiny_task, fold=2).eval()
    x = torch.rand(8, *model.config.input_shape, generator=torch.Generator().manual_seed(4))
    full = Engine("openvino").prepare(model, 16)
    ladder = Engine("openvino").prepare(model, 16, partial_batches=True)
    assert full.shapes == (8,) and ladder.shapes == (1, 2, 4, 8)
    compiled = [c for c in ladder._keep if hasattr(c, "create_infer_request")]
    assert sorted(c.inputs[0].get_shape()[0] for c in compiled) == [1, 2, 4, 8]
    for n in (1, 3, 8):
        torch.testing.assert_close(ladder.folded(x[:n]), full.folded(x[:n]), atol=1e-4, rtol=0)
    # NumPy in, NumPy out, the same logits: the engine's own I/O, with no PyTorch call around it
    assert ladder.numpy_io
    for n in (1, 3, 8):
        got = ladder.folded(x[:n].numpy())
        assert isinstance(got, np.ndarray) and got.dtype == np.float32
        np.testing.assert_array_equal(got, ladder.folded(x[:n]).numpy())
    images = torch.rand(7, tiny_task.in_channels, *model.config.input_shape[1:],
                        generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(ladder.classify(images.numpy()), ladder.classify(images).numpy())


@needs_openvino
def test_converting_a_model_sends_no_telemetry_and_leaves_the_converter_as_it_was(tiny_task: TaskSpec, monkeypatch):
    backend_ga4 = pytest.importorskip("openvino_telemetry.backend.backend_ga4")
    import openvino.tools.ovc.convert_impl as convert_impl

    sent: list[dict] = []
    monkeypatch.setattr(backend_ga4.GA4Backend, "send", lambda self, message: sent.append(message))
    monkeypatch.delenv("CI", raising=False)  # openvino-telemetry declines in CI only
    before = convert_impl.tm
    model = build_model(tiny_task, fold=2)
    ov_backend.convert_openvino(model, torch.rand(1, *model.config.input_shape))
    assert sent == []  # without the stub: 16 events, each sent from a forked process
    assert convert_impl.tm is before


@needs_openvino
def test_int8_quantization_sends_no_nncf_telemetry(tiny_task: TaskSpec, monkeypatch):
    decorator = pytest.importorskip("nncf.telemetry.decorator")
    calls: list[str] = []

    class Recorder:  # stands in for NNCF's reporter (NNCF stubs it under pytest, so it is set here)
        def __getattr__(self, name: str):
            return lambda *args, **kwargs: calls.append(name)

    recorder = Recorder()
    monkeypatch.setattr(decorator, "telemetry", recorder)
    model = build_model(tiny_task, fold=2)
    ov_model = ov_backend.convert_openvino(model, torch.rand(1, *model.config.input_shape))
    ov_backend.quantize_openvino(ov_model, torch.rand(4, *model.config.input_shape).numpy())
    assert calls == []
    assert decorator.telemetry is recorder
