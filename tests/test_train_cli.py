"""Command line: train, evaluate --json and sweep (tiny runs through main([...]))."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from foldedcnns.cli.main import main

sys.path.insert(0, str(Path(__file__).parent))
from test_train_trainer import write_tiny_images, write_tiny_task

TINY_OPTIONS = ["--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--no-progress",
                "--no-curriculum"]


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    return write_tiny_task(tmp_path), write_tiny_images(tmp_path / "data", {"train": 6, "val": 2, "test": 3})


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
