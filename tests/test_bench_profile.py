"""Per-layer profiles time every layer of each engine and attribute the FLOPs counted by analysis."""

import importlib.util

import pytest

from foldedcnns.analysis import count_flops
from foldedcnns.benchmark.profilers import can_profile, profile_interleaved, profile_layers
from foldedcnns.errors import ConfigError
from foldedcnns.models import build_model
from foldedcnns.runtime.engine import Engine

NO_OPENVINO = importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None
NEEDS_OPENVINO = pytest.mark.skipif(NO_OPENVINO, reason="openvino/nncf not installed")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def model(noscope_model):
    return noscope_model


@pytest.mark.parametrize("backend,precision", [
    ("channels-last", "fp32"), ("onnxruntime", "fp32"), pytest.param("compile", "fp32", marks=pytest.mark.slow),
    pytest.param("openvino", "fp32", marks=NEEDS_OPENVINO), pytest.param("openvino", "int8", marks=NEEDS_OPENVINO)])
def test_per_layer_profile_times_every_layer_and_attributes_flops(model, backend, precision):
    profile = profile_layers(model, Engine(backend, precision), batch_size=8, iterations=2)
    kinds = [layer.kind for layer in profile.layers]
    assert kinds.count("conv") == 2 and "pool" in kinds
    if backend == "openvino":  # OpenVINO may fuse the small dense layers (and ReLUs) into one "Subgraph" node
        assert kinds.count("linear") == 2 or "subgraph" in kinds[kinds.index("pool"):]
    else:
        assert kinds.count("linear") == 2
    assert profile.images == 8 and profile.seconds > 0
    conv_flops = sum(layer.flops for layer in profile.layers if layer.kind == "conv")
    report = count_flops(model)
    assert conv_flops == pytest.approx(2 * 4 * sum(la.macs for la in report.layers if la.kind == "conv"))
    assert 0 < profile.share("conv") <= 1
    assert all(layer.flops == 0 for layer in profile.layers if layer.kind == "pool")


def test_int8_profiles_are_openvinos_counters_only(model):
    assert can_profile(Engine("openvino", "int8")) and can_profile(Engine("onnxruntime", "fp32"))
    assert not can_profile(Engine("onnxruntime", "int8")) and not can_profile(Engine("cuda-graphs", "fp32"))
    with pytest.raises(ConfigError, match="int8 models exist for openvino only"):
        profile_layers(model, Engine("onnxruntime", "int8"), batch_size=8)
    with pytest.raises(ConfigError, match="per-layer profiles exist for"):
        profile_layers(model, Engine("cuda-graphs"), batch_size=8)


@pytest.mark.parametrize("backend", ["eager", "onnxruntime",
                                     pytest.param("openvino", marks=NEEDS_OPENVINO)])
def test_interleaved_profiles_keep_each_models_layers_apart(tiny_noscope_task, backend):
    models = [build_model(tiny_noscope_task, fold=f).eval() for f in (1, 2)]
    one, two = profile_interleaved(models, Engine(backend), batch_size=4, iterations=3, warmup=1)
    assert (one.fold, two.fold) == (1, 2) and (one.images, two.images) == (4, 4)
    for profile, model in ((one, models[0]), (two, models[1])):
        report = count_flops(model)
        conv = sum(la.flops for la in profile.layers if la.kind == "conv")
        assert conv == pytest.approx(2 * profile.images // profile.fold
                                     * sum(la.macs for la in report.layers if la.kind == "conv"))
        assert all(la.seconds > 0 for la in profile.layers if la.kind == "conv")
