"""Model descriptions: the original's exact format, the flat form, strict validation and ``models --check``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from foldedcnns.analysis import count_flops
from foldedcnns.cli.main import main
from foldedcnns.errors import ConfigError
from foldedcnns.models import ModelConfig, TaskSpec, build_model, get_task, load_description, spec_from_dict
from foldedcnns.models import spec as spec_module
from foldedcnns.models.game import min_side, spatial_path
from foldedcnns.models.validate import MAX_CLASSES, MAX_SIDE, MAX_WIDTH

# sot/timer3's model_description.json exactly as the original release ships it (class names in its order).
TIMER3_CLASSES = ["0", "1", *[str(i) for i in range(10, 20)], "2", *[str(i) for i in range(20, 26)],
                  *[str(i) for i in range(3, 10)], "other"]
ORIGINAL_TIMER3 = {"out-h": 22, "out-w": 30,
                   "model-architecture": {"template": "1_3s_1_convnet",
                                          "params": {"n-conv-units": 2, "pool1_stride": 1, "conv1_n_feature_maps": 32,
                                                     "convi_n_feature_maps": 32, "convn_n_feature_maps": 8}},
                   "ClassNames": TIMER3_CLASSES}


def nested(template: str = "1_3s_1_convnet", units: int = 3, c1: int = 24, ci: int = 40, cn: int = 12,
           h: int = 22, w: int = 30, classes: int = 27) -> dict[str, Any]:
    """A description in the original's format with non-default numbers (default: 24/40/12, 3 units)."""
    return {"out-h": h, "out-w": w,
            "model-architecture": {"template": template,
                                   "params": {"n-conv-units": units, "pool1_stride": 1, "conv1_n_feature_maps": c1,
                                              "convi_n_feature_maps": ci, "convn_n_feature_maps": cn}},
            "ClassNames": [f"c{i}" for i in range(classes)]}


def write(tmp_path: Path, desc: Any, name: str = "task.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(desc), encoding="utf-8")
    return path


def independent_counts(h: int, w: int, classes: int, units: int, convs_per_unit: int, widths: tuple[int, int, int],
                       fold: int) -> tuple[int, int]:
    """(params, MACs) of one folded input of the original's ConvN, derived by hand from its layer list:
    conv 3x3 pad 1 (+bias) keeps H x W; maxpool(3, s) maps n to (n - 3) // s + 1; first pool s2, one s1 pool per
    unit, last pool s2; widths int(base * sqrt(f)); linear (flat -> K f) with bias."""
    m = math.sqrt(fold)
    c1, ci, cn = (int(c * m) for c in widths)
    layers = [c1, "s2"] + ([ci] * convs_per_unit + ["s1"]) * units + [cn, "s2"]
    cin, params, macs = 3 * fold, 0, 0
    for layer in layers:
        if isinstance(layer, int):
            params += cin * layer * 9 + layer
            macs += h * w * layer * cin * 9
            cin = layer
        else:
            stride = 2 if layer == "s2" else 1
            h, w = (h - 3) // stride + 1, (w - 3) // stride + 1
    outputs = classes * fold
    return params + cin * h * w * outputs + outputs, macs + cin * h * w * outputs


# -- the original's format builds the original architecture -------------------------------------------------


def test_nested_description_with_other_numbers_builds_exactly(tmp_path: Path) -> None:
    path = write(tmp_path, nested())
    report = count_flops(build_model(str(path)))
    # By hand: 22x30 -> 10x14 -> 8x12 -> 6x10 -> 4x8 -> 1x3; convs 672 + 37,560 + 2 x 43,320 + 4,332, linear 36 x 27.
    assert (report.params, report.macs) == (130_203, 12_547_692)
    assert report.params != count_flops(build_model(get_task("sot/timer3"))).params


@pytest.mark.parametrize(("template", "per_unit"), [("1_3s_1_convnet", 3), ("1_1_convnet", 1)])
@pytest.mark.parametrize("fold", [1, 2, 3, 4])
def test_both_templates_match_an_independent_count(tmp_path: Path, template: str, per_unit: int, fold: int) -> None:
    desc = nested(template, units=2, c1=20, ci=36, cn=10, h=27, w=45, classes=13)
    report = count_flops(build_model(str(write(tmp_path, desc)), fold=fold))
    assert (report.params, report.macs) == independent_counts(27, 45, 13, 2, per_unit, (20, 36, 10), fold)


def test_original_and_flat_forms_build_the_same_model(tmp_path: Path) -> None:
    original = load_description(write(tmp_path, ORIGINAL_TIMER3, "timer3.json"))
    assert original.name == "timer3" and original.family == "game" and original.num_classes == 27
    shipped = get_task("sot/timer3")
    assert original.architecture == shipped.architecture  # nested params become the flat form
    for fold in (1, 4):
        a, b = count_flops(build_model(original, fold=fold)), count_flops(build_model(shipped, fold=fold))
        assert (a.params, a.macs) == (b.params, b.macs)
    assert count_flops(build_model(original)).params == 60_451  # reference section 3.2
    flat = json.loads(json.dumps(ORIGINAL_TIMER3))
    flat["model-architecture"] = {"template": "1_3s_1_convnet", **flat["model-architecture"]["params"]}
    assert load_description(write(tmp_path, flat, "flat.json")).architecture == original.architecture


def test_descriptions_round_trip_through_to_dict_and_checkpoints(tmp_path: Path) -> None:
    spec = load_description(write(tmp_path, nested()))
    again = spec_from_dict(spec.to_dict())
    assert again.architecture == spec.architecture and again.class_names == spec.class_names
    config = ModelConfig.from_dict(build_model(spec, fold=2).config.to_dict())
    assert count_flops(build_model(config.task, fold=2)).params == count_flops(build_model(spec, fold=2)).params


def test_flops_command_reads_the_nested_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flops", "--description", str(write(tmp_path, nested())), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 130_203


def test_spatial_path_and_min_side() -> None:
    assert spatial_path(22, 2) == [22, 10, 8, 6, 2]
    assert spatial_path(10, 1) == [10, 4, 2]  # the unit's pool has nothing left to take
    for units in (0, 1, 3):
        assert len(spatial_path(min_side(units), units)) == units + 3
        assert len(spatial_path(min_side(units) - 1, units)) < units + 3


# -- strict validation: one-line errors naming the file and the key -----------------------------------------


def load_error(tmp_path: Path, desc: Any) -> str:
    path = write(tmp_path, desc)
    with pytest.raises(ConfigError) as info:
        load_description(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_misspelled_nested_key(tmp_path: Path) -> None:
    desc = nested()
    desc["model-architecture"]["params"]["n-conv-unit"] = desc["model-architecture"]["params"].pop("n-conv-units")
    message = load_error(tmp_path, desc)
    assert "unknown key 'model-architecture.params.n-conv-unit' (did you mean 'n-conv-units'?)" in message
    assert "known keys of 'model-architecture.params': conv1_n_feature_maps, convi_n_feature_maps" in message


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.update(ClassName=d.pop("ClassNames")), "unknown key 'ClassName' (did you mean 'ClassNames'?)"),
    (lambda d: d["model-architecture"].update(templat="x"), "'model-architecture.templat' (did you mean 'template'?)"),
    (lambda d: d["model-architecture"].update(n_conv_units=1), "'model-architecture.n_conv_units'"),
    (lambda d: d.update(famliy="game"), "(did you mean 'family'?)"),
    (lambda d: d.update(noscope={"objekt": "car"}), "unknown key 'noscope.objekt' (did you mean 'object'?)"),
])
def test_unknown_keys_at_every_level(tmp_path: Path, change: Any, expected: str) -> None:
    desc = nested()
    change(desc)
    assert expected in load_error(tmp_path, desc)


def test_unknown_keys_of_other_families(tmp_path: Path) -> None:
    noscope = {"family": "noscope", "out-h": 50, "out-w": 50, "ClassNames": ["0", "1"],
               "model-architecture": {"nb_filters": 16, "nb_dense": 128, "nb_layer": 2}}
    assert "'model-architecture.nb_layer' (did you mean 'nb_layers'?)" in load_error(tmp_path, noscope)
    resnet = {"family": "resnet", "out-h": 32, "out-w": 32, "ClassNames": ["a", "b"],
              "model-architecture": {"width": [64, 128, 256, 512]}}
    assert "'model-architecture.width' (did you mean 'widths'?)" in load_error(tmp_path, resnet)
    assert "unknown family 'gmae' (did you mean 'game'?); known families: game, noscope, resnet" in \
        load_error(tmp_path, {**nested(), "family": "gmae"})


def test_numbers_both_nested_and_flat(tmp_path: Path) -> None:
    desc = nested()
    desc["model-architecture"]["n-conv-units"] = 1
    assert "'model-architecture.n-conv-units' is given next to 'model-architecture.params'" in \
        load_error(tmp_path, desc)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("n-conv-units", 2.0, "'model-architecture.params.n-conv-units' must be an integer from 0 to 32, got 2.0"),
    ("n-conv-units", 33, "must be an integer from 0 to 32, got 33"),
    ("n-conv-units", True, "got True"),
    ("conv1_n_feature_maps", 0, "'model-architecture.params.conv1_n_feature_maps' must be an integer from 1"),
    ("convi_n_feature_maps", -8, "got -8"),
    ("convn_n_feature_maps", "8", "got '8' (a string)"),
    ("convi_n_feature_maps", 1e9, "got 1000000000.0 (a number)"),
    ("convi_n_feature_maps", 1_000_000_000, f"from 1 to {MAX_WIDTH:,}, got 1,000,000,000"),
    ("pool1_stride", 0, "'model-architecture.params.pool1_stride' must be an integer from 1"),
])
def test_architecture_numbers_are_checked(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    desc = nested()
    desc["model-architecture"]["params"][key] = value
    assert expected in load_error(tmp_path, desc)


@pytest.mark.parametrize(("change", "expected"), [
    ({"out-h": 0}, f"'out-h' must be an integer from 1 to {MAX_SIDE:,}, got 0"),
    ({"out-w": 100_000}, "'out-w' must be an integer from 1 to 2,048, got 100,000"),
    ({"out-h": "22"}, "'out-h' must be an integer"),
    ({"chan-in": 0}, "'chan-in' must be an integer from 1 to 64"),
    ({"out-h": 10}, "'out-h' 10 is too small for 'model-architecture.params.n-conv-units' 3: the pools leave no "
                    "spatial extent (10 -> 4 -> 2 -> none); use out-h >= 19"),
    ({"ClassNames": ["a"]}, "'ClassNames' must list 2 to 10,000 class names, got 1"),
    ({"ClassNames": [f"c{i}" for i in range(MAX_CLASSES + 1)]}, "got 10,001"),
    ({"ClassNames": ["a", 7]}, "'ClassNames[1]' must be a non-empty string, got 7"),
    ({"ClassNames": ["a", "b", "a"]}, "'ClassNames' lists 'a' twice"),
    ({"ClassNames": "ab"}, "'ClassNames' must be a list of class names"),
    ({"num-classes": 5}, "'num-classes' is 5 but 'ClassNames' lists 27 names"),
    ({"class-names": ["a", "b"]}, "'ClassNames' and 'class-names' are the same setting"),
    ({"name": 5}, "'name' must be a non-empty string, got 5"),
    ({"mean": [0.5, 0.5, 0.5]}, "give both 'mean' and 'std' or neither"),
    ({"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}, "'std[1]' must be > 0"),
    ({"mean": [0.5] * 2, "std": [0.2] * 2}, "'mean' must be a list of 3 numbers"),
    ({"mean": [0.5, "x", 0.5], "std": [0.2] * 3}, "'mean[1]' must be a finite number"),
    ({"model-architecture": []}, "'model-architecture' must be a JSON object, got a list"),
    ({"noscope": {"object": "car", "start_split": -1}}, "'noscope.start_split' must be an integer from 0"),
])
def test_top_level_values_are_checked(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    assert expected in load_error(tmp_path, {**nested(), **change})


def test_class_count_without_names(tmp_path: Path) -> None:
    desc = {k: v for k, v in nested().items() if k != "ClassNames"}
    assert load_description(write(tmp_path, {**desc, "num-classes": 4})).class_names == ("0", "1", "2", "3")
    assert "'num-classes' must be an integer from 2 to 10,000, got 1,000,000,000" in \
        load_error(tmp_path, {**desc, "num-classes": 1_000_000_000})  # refused before any list is made
    assert "'ClassNames' is missing" in load_error(tmp_path, desc)


def test_other_families_check_sizes(tmp_path: Path) -> None:
    noscope = {"family": "noscope", "out-h": 50, "out-w": 50, "ClassNames": ["0", "1"],
               "model-architecture": {"nb_filters": 16, "nb_dense": 128, "nb_layers": 16}}
    assert "'out-h' 50 is too small for 'model-architecture.nb_layers' 16: 8 max-pools" in load_error(tmp_path, noscope)
    noscope["model-architecture"]["nb_layers"] = 3
    assert "'model-architecture.nb_layers' must be even" in load_error(tmp_path, noscope)
    del noscope["model-architecture"]["nb_dense"]
    assert "'model-architecture.nb_dense' is missing" in load_error(tmp_path, noscope)
    resnet = {"family": "resnet", "out-h": 32, "out-w": 32, "ClassNames": ["a", "b"],
              "model-architecture": {"widths": [64, 128, 256]}}
    assert "'model-architecture.widths' must be a list of 4 integers" in load_error(tmp_path, resnet)
    resnet["model-architecture"] = {"block": "bottleneck"}
    assert "'model-architecture.block' must be one of basic, got 'bottleneck'" in load_error(tmp_path, resnet)


def test_huge_models_are_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    # Every number is within its own bound, but the model would have about 58 billion parameters (230 GB):
    # building it for real would exhaust memory, so passing means it was counted on the meta device only.
    desc = nested(units=32, c1=4096, ci=4096, cn=4096, h=MAX_SIDE, w=MAX_SIDE)
    with pytest.raises(ConfigError, match=r"the model at fold 1 \(multiplier 1\) would have [\d,]+ parameters, more "
                                          r"than the limit of 1,000,000,000"):
        build_model(str(write(tmp_path, desc)))
    ok = write(tmp_path, nested(), "ok.json")
    with pytest.raises(ConfigError, match="parameters, more than the limit"):
        build_model(str(ok), fold=2, multiplier=400.0)
    with pytest.raises(ConfigError, match="multiplier must be a finite number > 0"):
        build_model(str(ok), multiplier=float("inf"))


def test_specs_made_in_code_are_checked_when_built() -> None:
    spec = TaskSpec(name="x", family="game", in_channels=3, height=22, width=30, class_names=("a", "b"),
                    architecture={"template": "1_3s_1_convnet", "params": {"n-conv-unit": 1}})
    with pytest.raises(ConfigError, match=r"unknown key 'model-architecture\.params\.n-conv-unit'"):
        build_model(spec)


# -- files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"out-h": 22, \xff\xfe}', "not UTF-8 text (byte 0xff at offset 14)"),
    (b'{"out-h": 22,\n "out-w": }', "not valid JSON (Expecting value at line 2 column 11)"),
    (b"", "not valid JSON"),
    (b'[1, 2]', "a model description must be a JSON object {...}, got list"),
    (b'{"out-h": 22, "out-h": 23}', "key 'out-h' appears twice in one object"),
    (b'{"out-h": NaN}', "NaN is not a JSON number"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_bad_files_are_one_line_errors(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_description(path)
    assert expected in str(info.value) and "\n" not in str(info.value) and str(path) in str(info.value)


def test_file_size_limit_and_bom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(nested()).encode())
    assert load_description(path).num_classes == 27
    monkeypatch.setattr(spec_module, "MAX_FILE_BYTES", 100)
    with pytest.raises(ConfigError, match="is too large for a model description"):
        load_description(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_description(tmp_path / "missing.json")


# -- foldedcnns models --check ----------------------------------------------------------------------------


def test_check_prints_the_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, nested())
    assert main(["models", "--check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: valid; task task, family game (template 1_3s_1_convnet, n-conv-units 3")
    assert "features.26  MaxPool2d  12x1x3" in out and "classifier   Linear     27" in out
    assert "130,203" in out and "12,547,692" in out and "pool1_stride 1 is read and ignored" in out
    assert main(["models", "--check", str(path), "--fold", "4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = independent_counts(22, 30, 27, 3, 3, (24, 40, 12), 4)
    assert (info["params"], info["macs"]) == expected and info["input_shape"] == [12, 22, 30]
    assert info["layers"][0] == {"layer": "features.0", "type": "Conv2d", "output_shape": [48, 22, 30],
                                 "params": 12 * 48 * 9 + 48, "macs": 22 * 30 * 48 * 12 * 9}
    assert sum(row["params"] for row in info["layers"]) == info["params"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["--check", "{bad}"], "unknown key 'model-architecture.params.n-conv-unit' (did you mean 'n-conv-units'?)"),
    (["--check", "{missing}"], "does not exist"),
    (["--check", "{ok}", "--fold", "0"], "--fold must be >= 1"),
])
def test_check_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    desc = nested()
    desc["model-architecture"]["params"]["n-conv-unit"] = desc["model-architecture"]["params"].pop("n-conv-units")
    paths = {"bad": write(tmp_path, desc, "bad.json"), "ok": write(tmp_path, nested(), "ok.json"),
             "missing": tmp_path / "missing.json"}
    assert main(["models", *[a.format(**paths) for a in argv]]) == 1
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


# -- the real-image check's description (benchmarks/real_digits.py) ----------------------------------------


def test_digits_description_is_the_originals_format(tmp_path: Path) -> None:
    import numpy as np
    from real_digits import digits_description, split_indices

    desc = digits_description(24)
    assert set(desc) == {"out-h", "out-w", "model-architecture", "ClassNames"}  # no name, family or chan-in
    spec = load_description(write(tmp_path, desc, "digits.json"))
    report = count_flops(build_model(spec, fold=4))
    assert spec.name == "digits" and (report.params, report.macs) == independent_counts(24, 24, 10, 1, 3,
                                                                                        (32, 32, 8), 4)
    labels = np.repeat(np.arange(10), 180)[:1797]
    splits = split_indices(labels, seed=0)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(1797))
    assert all(abs(np.sum(labels[splits["train"]] == c) - 2 / 3 * np.sum(labels == c)) <= 1 for c in range(10))
    assert all(np.array_equal(a, b) for a, b in zip(splits.values(), split_indices(labels, 0).values(), strict=True))
