"""Command line: train, evaluate --json and sweep (tiny runs through main([...])); training options generated
from the Recipe and TrainConfig fields."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import typing
from collections.abc import Callable
from pathlib import Path

import pytest

from foldedcnns.cli import train as train_cli
from foldedcnns.cli.main import main
from foldedcnns.cli.train import add_training_options, training_overrides
from foldedcnns.errors import ConfigError
from foldedcnns.training import config as config_module
from foldedcnns.training.config import TrainConfig, plan_run, run_options
from foldedcnns.training.recipes import Recipe, option, recipe_options

TINY_OPTIONS = ["--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--no-progress",
                "--no-curriculum"]


@pytest.fixture
def tiny(tiny_train_files: Callable[..., tuple[Path, Path]]) -> tuple[Path, Path]:
    """(description JSON, data folder) with 6 train, 2 val and 3 test images per class."""
    return tiny_train_files({"train": 6, "val": 2, "test": 3})


def test_train_then_evaluate_json(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc, data = tiny
    run = tmp_path / "run"
    assert main(["train", "--description", str(desc), "--data", str(data), "--fold", "2", "--out", str(run),
                 "--json", *TINY_OPTIONS]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["fold"] == 2 and trained["epochs"] == 2 and "test_top1" in trained["best"]
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"top1", "top5", "loss", "images"} <= set(report)
    assert report["images"] == 9 and report["split"] == "test"
    assert report["top1"] == pytest.approx(trained["best"]["test_top1"])


@pytest.mark.slow
def test_train_prints_a_table(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc, data = tiny
    assert main(["train", "--description", str(desc), "--data", str(data), "--out", str(tmp_path / "r"),
                 *TINY_OPTIONS]) == 0
    out = capsys.readouterr().out
    assert "best epoch" in out and "Top-1 %" in out and "best.pt" in out


def test_progress_bar_uses_the_original_style(tiny: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    desc, data = tiny
    options = [o for o in TINY_OPTIONS if o != "--no-progress"]
    assert main(["train", "--description", str(desc), "--data", str(data), "--out", str(tmp_path / "r"),
                 "--json", *options]) == 0
    err = capsys.readouterr().err
    assert "Epoch 2. train. Top-1=" in err and ", Top-5=" in err and ", Loss=" in err and "Epoch 1. val." in err


def test_evaluate_rejects_a_bad_checkpoint(tiny: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bad), "--data", str(tiny[1])]) == 1
    assert "cannot read checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_writes_summary_and_plot(tiny: tuple[Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    desc, data = tiny
    out = tmp_path / "sweep"
    assert main(["sweep", "--tasks", str(desc), "--folds", "1,2", "--data", str(data), "--out", str(out),
                 *TINY_OPTIONS]) == 0
    with open(out / "summary.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["fold"]) for r in rows] == [1, 2]
    assert rows[0]["mode"] == "Original" and rows[1]["mode"] == "Folded"
    assert float(rows[0]["top1_vs_fold1"]) == 0.0
    assert int(rows[1]["params"]) > int(rows[0]["params"]) and float(rows[1]["flops_per_image"]) > 0
    assert (out / "accuracy_vs_fold.png").read_bytes()[:4] == b"\x89PNG"
    assert "summary:" in capsys.readouterr().out
    # Restartable: a second identical sweep reuses the finished runs.
    assert main(["sweep", "--tasks", str(desc), "--folds", "1,2", "--data", str(data), "--out", str(out), "--json",
                 *TINY_OPTIONS]) == 0
    again = json.loads(capsys.readouterr().out)["rows"]
    assert [r["test_top1"] for r in again] == pytest.approx([float(r["test_top1"]) for r in rows], rel=1e-5)


def test_sweep_checks_every_run_first(tiny: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    desc, data = tiny
    code = main(["sweep", "--tasks", str(desc), "--folds", "1,4", "--data", str(data), "--out", str(tmp_path / "s"),
                 "--epochs", "1", "--batch-size", "2", "--no-progress", "--device", "cpu"])
    assert code == 1 and "smaller than fold 4" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


# -- options generated from the Recipe and TrainConfig fields ------------------------------------------


def _training_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_training_options(parser)
    return parser


def _flag(spec: dataclasses.Field) -> str:
    return spec.metadata.get("flag") or "--" + spec.name.replace("_", "-")


def _value(spec: dataclasses.Field, hint: object) -> tuple[list[str], object]:
    """Command-line words that set ``spec`` to a value other than its default, and that value."""
    choices = spec.metadata.get("choices")
    if choices:
        value = next(c for c in reversed(choices) if c != spec.default)
        return [_flag(spec), value], value
    if bool in typing.get_args(hint) or hint is bool:
        return [_flag(spec)], True
    if int in typing.get_args(hint) or hint is int:
        return [_flag(spec), "3"], 3
    return [_flag(spec), "0.25"], 0.25


def test_every_option_field_is_a_flag_with_its_help_and_default() -> None:
    parser = _training_parser()
    actions = {a.dest: a for a in parser._actions}
    for spec in (*recipe_options(), *run_options()):
        action = actions[spec.name]
        assert _flag(spec) in action.option_strings
        if spec.name != "device":
            assert action.help == spec.metadata["help"]
        # recipe options default to the recipe's value (None); run options to the TrainConfig field's default
        assert action.default == (spec.default if spec in run_options() else None)
    assert actions["device"].default == "auto" and actions["distill_temperature"].option_strings == ["--temperature"]


def test_every_recipe_option_set_on_the_command_line_reaches_the_recipe() -> None:
    hints = typing.get_type_hints(Recipe)
    words, expected = ["--device", "cpu"], {}
    for spec in recipe_options():
        argv, value = _value(spec, hints[spec.name])
        words += argv
        expected[spec.name] = value
    args = _training_parser().parse_args(words)
    config = TrainConfig(task="lol/goldnumber-fraction", data=".", out=".", fold=2, **training_overrides(args))
    recipe = plan_run(config).recipe
    assert {name: getattr(recipe, name) for name in expected} == expected


def test_a_new_recipe_field_with_metadata_is_a_flag_and_an_override(monkeypatch: pytest.MonkeyPatch) -> None:
    # Give an existing Recipe field (momentum, not an option today) option metadata, as a new field would have:
    # no other edit makes it a flag of train and sweep and an override plan_run applies.
    momentum = dataclasses.field(default=0.0, metadata=option("optimizer momentum"))
    momentum.name, momentum.type = "momentum", "float"
    options = (*recipe_options(), momentum)
    monkeypatch.setattr(train_cli, "recipe_options", lambda: options)
    monkeypatch.setattr(config_module, "recipe_options", lambda: options)
    args = _training_parser().parse_args(["--momentum", "0.9", "--epochs", "3", "--device", "cpu"])
    overrides = training_overrides(args)
    assert overrides["recipe_overrides"] == {"momentum": 0.9} and overrides["epochs"] == 3
    config = TrainConfig(task="lol/goldnumber-fraction", data=".", out=".", fold=2, **overrides)
    recipe = plan_run(config).recipe
    assert recipe.momentum == 0.9 and recipe.epochs == 3
    with pytest.raises(ConfigError, match="set it once"):
        plan_run(TrainConfig(task="lol/goldnumber-fraction", data=".", out=".", epochs=3, device="cpu",
                             recipe_overrides={"epochs": 4}))
