"""Synthetic game-screen crops: every game task, determinism, output layout, contact sheets, CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from foldedcnns.cli.main import main
from foldedcnns.data.folder import ImageFolder
from foldedcnns.data.imageio import read_image
from foldedcnns.data.synth import (
    TASK_LAYOUTS,
    contact_sheet,
    folder_contact_sheet,
    generate_synthetic,
    render_batch,
    split_counts,
)
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.models import TaskSpec, get_task, list_models

GAME_TASKS = [t for t in list_models() if not t.startswith("compound/") and get_task(t).family == "game"]


def test_every_shipped_game_task_has_a_layout() -> None:
    assert sorted(GAME_TASKS) == sorted(TASK_LAYOUTS)
    assert len(GAME_TASKS) == 6


@pytest.mark.parametrize("task", sorted(TASK_LAYOUTS))
def test_render_batch_shapes_and_determinism(task: str) -> None:
    spec = get_task(task)
    labels = [k % spec.num_classes for k in range(0, 3 * spec.num_classes, max(1, spec.num_classes // 7))]
    a = render_batch(task, labels, np.random.default_rng(3))
    assert a.shape == (len(labels), spec.height, spec.width, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_batch(task, labels, np.random.default_rng(3)))
    assert not np.array_equal(a, render_batch(task, labels, np.random.default_rng(4)))
    assert all(img.std() > 5 for img in a)  # no blank crops: text, icons or clutter on a textured panel


def test_generic_fallback_for_user_tasks(game_task: Callable[..., TaskSpec]) -> None:
    spec = game_task("mygame/ammo", 20, 40, ("A", "BB", "other"))
    images = render_batch(spec, [0, 1, 2, 2], 0)
    assert images.shape == (4, 20, 40, 3)


def test_render_batch_rejects_bad_input(game_task: Callable[..., TaskSpec]) -> None:
    with pytest.raises(ConfigError, match=r"game tasks only.*noscope"):
        render_batch("noscope/coral", [0], 0)
    with pytest.raises(ConfigError, match=r"label 11 is not a class .*0\.\.10"):
        render_batch("lol/goldnumber-fraction", [11], 0)
    bad = game_task("g/x", classes=("a/b", "c"))
    with pytest.raises(ConfigError, match="cannot be folder names"):
        render_batch(bad, [0], 0)


def test_split_counts() -> None:
    assert split_counts(500, (0.7, 0.15, 0.15)) == {"train": 350, "val": 75, "test": 75}
    assert split_counts(3, (0.7, 0.15, 0.15)) == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(ConfigError, match="at least 3"):
        split_counts(2, (0.7, 0.15, 0.15))
    with pytest.raises(ConfigError, match="summing to 1"):
        split_counts(10, (0.5, 0.5, 0.5))


def test_generate_layout_and_determinism(tmp_path: Path) -> None:
    task = "sot/timer3"
    spec = get_task(task)
    counts = generate_synthetic(task, tmp_path / "a", per_class=6, seed=5, workers=2)
    assert counts == {"train": 4 * 27, "val": 27, "test": 27}
    manifest = json.loads((tmp_path / "a" / "synth.json").read_text())
    assert manifest["task"] == task and manifest["counts"] == counts
    train = ImageFolder(tmp_path / "a" / "train", classes=spec.class_names)
    x, y = train.tensors()
    assert x.shape == (4 * 27, 3, 22, 30) and y.bincount().tolist() == [4] * 27
    generate_synthetic(task, tmp_path / "b", per_class=6, seed=5, workers=1)
    for path in (tmp_path / "a").rglob("*.png"):  # same seed, other worker count: same pixels
        assert np.array_equal(read_image(path), read_image(tmp_path / "b" / path.relative_to(tmp_path / "a")))
    generate_synthetic(task, tmp_path / "c", per_class=6, seed=6, workers=1)
    assert not torch.equal(ImageFolder(tmp_path / "c" / "train").tensors()[0], x)


def test_generate_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    generate_synthetic("apex/squad_count_v2", out, per_class=3, workers=1)
    with pytest.raises(DataError, match="already exists"):
        generate_synthetic("apex/squad_count_v2", out, per_class=3, workers=1)
    generate_synthetic("apex/squad_count_v2", out, per_class=4, workers=1, overwrite=True)
    assert json.loads((out / "synth.json").read_text())["per_class"] == 4
    with pytest.raises(ConfigError):
        generate_synthetic("noscope/coral", tmp_path / "x", per_class=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_contact_sheets(tmp_path: Path) -> None:
    info = contact_sheet("lol/goldnumber-fraction", tmp_path / "sheet.png", per_class=2)
    sheet = read_image(tmp_path / "sheet.png")
    assert info["images"] == 22 and info["classes"] == 11
    assert sheet.shape[0] > 11 * 22 * 4 and sheet.shape[1] > 2 * 52 * 4  # crops enlarged 4x, one row per class
    generate_synthetic("sot/coin_count-digits_3_4-v2", tmp_path / "data", per_class=3, workers=1)
    info = folder_contact_sheet(tmp_path / "data" / "train", tmp_path / "folder.png", per_class=1)
    assert info == {"path": str(tmp_path / "folder.png"), "classes": 15, "images": 15}


def test_cli_synth_and_sheet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gold"
    assert main(["data", "synth", "lol/goldnumber-fraction", str(out), "--per-class", "4", "--seed", "1",
                 "--workers", "1", "--no-progress", "--sheet", str(tmp_path / "s.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["counts"] == {"train": 22, "val": 11, "test": 11} and (tmp_path / "s.png").is_file()
    assert main(["data", "sheet", "--folder", str(out / "val"), str(tmp_path / "v.png")]) == 0
    assert "11 classes" in capsys.readouterr().out
    assert main(["data", "synth", "cifar10", str(tmp_path / "c"), "--no-progress"]) == 1
    assert "game tasks only" in capsys.readouterr().err
