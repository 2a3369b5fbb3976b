"""The model zoo: every registered model builds at f = 1..4 with the original's exact sizes."""

import json
import math

import pytest
import torch

from foldedcnns.analysis import count_flops
from foldedcnns.errors import ConfigError
from foldedcnns.models import build_model, get_task, list_models, load_description, register_task, spec_from_dict

FOLDS = [1, 2, 3, 4]

# Parameter counts derived in reference/original-code.md section 3 (biases included).
REFERENCE_PARAMS = {
    ("lol/goldnumber-fraction", 1): 33_867, ("lol/goldnumber-fraction", 2): 69_759,
    ("lol/goldnumber-fraction", 3): 106_988, ("lol/goldnumber-fraction", 4): 150_268,
    ("lol/goldnumber-int", 1): 60_367, ("lol/goldnumber-int", 2): 142_559,
    ("lol/goldnumber-int", 3): 235_988, ("lol/goldnumber-int", 4): 361_868,
    ("lol/timer-minutes", 1): 37_958, ("apex/squad_count_v2", 1): 33_086,
    ("sot/coin_count-digits_3_4-v2", 1): 32_887, ("sot/timer3", 1): 60_451,
}
# Linear sizes from the same section: (in_features, out_features) of the classifier per fold.
REFERENCE_LINEAR = {
    "lol/goldnumber-fraction": [(264, 11), (363, 22), (429, 33), (528, 44)],
    "lol/timer-minutes": [(112, 62), (154, 124), (182, 186), (224, 248)],
    "apex/squad_count_v2": [(96, 22), (132, 44), (156, 66), (192, 88)],
    "sot/coin_count-digits_3_4-v2": [(128, 15), (176, 30), (208, 45), (256, 60)],
    "sot/timer3": [(64, 27), (88, 54), (104, 81), (128, 108)],
    "noscope/coral": [(10000, 128), (13750, 181), (16875, 221), (20000, 256)],
    "noscope/taipei": [(40000, 32), (56250, 45), (68750, 55), (80000, 64)],
    "noscope/roundabout": [(9216, 32), (12960, 45), (15840, 55), (18432, 64)],
}
RESNET_WIDTHS = {1: [64, 128, 256, 512], 2: [90, 181, 362, 724], 3: [110, 221, 443, 886], 4: [128, 256, 512, 1024]}
# Building (and running) a widened ResNet-18 takes 1.5-2.5 s on 2 CPU cores: those cases are slow.
MODEL_FOLDS = [pytest.param(name, fold, id=f"{fold}-{name}",
                            marks=[pytest.mark.slow] if name.startswith("cifar") and fold == 2 else [])
               for fold in FOLDS for name in list_models(compound=False)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fold"), MODEL_FOLDS)
def test_every_model_builds_and_runs(name, fold):
    if name.startswith("cifar") and fold > 2:
        pytest.skip("large ResNets: covered by the width test")
    model = build_model(name, fold=fold).eval()
    config = model.config
    spec = get_task(name)
    assert config.input_shape == (3 * fold, spec.height, spec.width)
    with torch.no_grad():
        out = model(torch.rand(2, *config.input_shape))
    assert out.shape == (2, spec.num_classes * fold)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("key", "expected"), sorted(REFERENCE_PARAMS.items()))
def test_game_parameter_counts(key, expected):
    name, fold = key
    assert sum(p.numel() for p in build_model(name, fold=fold).parameters()) == expected


@pytest.mark.parametrize("name", sorted(REFERENCE_LINEAR))
def test_linear_sizes(name):
    for fold, (fin, fout) in zip(FOLDS, REFERENCE_LINEAR[name], strict=True):
        linears = [layer for layer in count_flops(build_model(name, fold=fold)).layers if layer.kind == "linear"]
        assert (linears[0].input_shape[0], linears[0].output_shape[0]) == (fin, fout)
        assert linears[-1].output_shape[0] == 2 * fold or name.startswith(("lol", "apex", "sot"))


@pytest.mark.parametrize("fold", [1, *(pytest.param(f, marks=pytest.mark.slow) for f in FOLDS[1:])])
def test_resnet_widths_and_params(fold):
    report = count_flops(build_model("cifar10", fold=fold, init=False))
    convs = [layer.output_shape[0] for layer in report.layers if layer.kind == "conv"]
    widths = RESNET_WIDTHS[fold]
    assert convs[0] == widths[0] and sorted(set(convs)) == widths
    assert report.layers[-1].output_shape == (10 * fold,)
    if fold == 1:
        assert report.params == 11_173_962  # the standard CIFAR ResNet-18


def test_compound_baseline_shapes():
    model = build_model("compound/lol/goldnumber-fraction")
    config = model.config
    assert config.mode == "Compound" and config.input_shape == (3, 19, 45)
    convs = [layer for layer in count_flops(model).layers if layer.kind == "conv"]
    assert [c.output_shape[0] for c in convs] == [29, 29, 29, 29]  # width 32 -> 29, last conv dropped
    timer3 = [layer for layer in count_flops(build_model("compound/sot/timer3")).layers if layer.kind == "conv"]
    assert len(timer3) == 7  # 8 convs x 1/1.1 -> 7
    with pytest.raises(ConfigError, match="not folded"):
        build_model("compound/lol/goldnumber-fraction", fold=2)
    with pytest.raises(ConfigError, match="game tasks only"):
        build_model("noscope/coral", phi=2)


def game_closed_form(h, w, classes, units, per_unit, fold, m):
    """Params and MACs of a game CNN computed independently of the package, for one folded input."""
    c1, ci, cn = int(32 * m), int(32 * m), int(8 * m)

    def pool(size, stride):
        return (size - 3) // stride + 1

    params = macs = 0
    cin = 3 * fold
    plan = [("conv", c1), ("pool", 2)] + ([("conv", ci)] * per_unit + [("pool", 1)]) * units
    plan += [("conv", cn), ("pool", 2)]
    for kind, value in plan:
        if kind == "conv":
            params += 9 * cin * value + value
            macs += h * w * value * cin * 9
            cin = value
        else:
            h, w = pool(h, value), pool(w, value)
    flat = cin * h * w
    params += flat * classes * fold + classes * fold
    macs += flat * classes * fold
    return params, macs


@pytest.mark.parametrize("template,per_unit", [("1_3s_1_convnet", 3), ("1_1_convnet", 1)])
@pytest.mark.parametrize("fold", FOLDS)
def test_user_description_not_shipped(tmp_path, template, per_unit, fold):
    desc = {"name": "my/score", "out-h": 27, "out-w": 61, "ClassNames": [f"c{i}" for i in range(17)],
            "model-architecture": {"template": template, "n-conv-units": 2, "conv1_n_feature_maps": 32,
                                   "convi_n_feature_maps": 32, "convn_n_feature_maps": 8}}
    path = tmp_path / "score.json"
    path.write_text(json.dumps(desc))
    report = count_flops(build_model(str(path), fold=fold))
    params, macs = game_closed_form(27, 61, 17, 2, per_unit, fold, math.sqrt(fold))
    assert (report.params, report.macs) == (params, macs)


def test_description_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_description(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="ClassNames"):
        spec_from_dict({"name": "x", "out-h": 20, "out-w": 20})
    with pytest.raises(ConfigError, match="out-h"):
        spec_from_dict({"name": "x", "out-w": 20, "ClassNames": ["a", "b"]})
    with pytest.raises(ConfigError, match=r"'model-architecture\.template' must be one of 1_1_convnet, 1_3s_1_convnet"):
        spec_from_dict({"name": "x", "out-h": 20, "out-w": 20, "ClassNames": ["a", "b"],
                        "model-architecture": {"template": "9_9_convnet"}})
    with pytest.raises(ConfigError, match="too small"):
        spec_from_dict({"name": "x", "out-h": 4, "out-w": 4, "ClassNames": ["a", "b"]})
    with pytest.raises(ConfigError, match="unknown task"):
        build_model("lol/nothing")
    with pytest.raises(ConfigError, match="fold must be an integer"):
        build_model("lol/goldnumber-fraction", fold=0)


def test_register_user_task():
    spec = spec_from_dict({"name": "test/registered", "out-h": 20, "out-w": 30, "ClassNames": ["a", "b", "c"]})
    register_task(spec)
    assert "test/registered" in list_models("test/*")
    assert build_model("test/registered", fold=2).config.input_shape == (6, 20, 30)
    with pytest.raises(ValueError, match="already registered"):
        register_task(spec)


def test_multiplier_override():
    model = build_model("noscope/coral", fold=4, multiplier=1.0)
    convs = [layer for layer in count_flops(model).layers if layer.kind == "conv"]
    assert convs[0].output_shape[0] == 16 and model.config.multiplier == 1.0
