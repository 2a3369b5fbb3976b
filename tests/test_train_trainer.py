"""Trainer: folding in the loop, every image counted, files and checkpoints, resume, errors, evaluate."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from foldedcnns.cli.main import main
from foldedcnns.data.model_input import to_model_input
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from foldedcnns.runtime.engine import Engine
from foldedcnns.training.evaluation import evaluate_split
from foldedcnns.training.metrics import METRIC_COLUMNS, EpochMetrics
from foldedcnns.training.splits import load_split
from foldedcnns.training.trainer import TrainConfig, evaluate, plan_run, train

TINY_H, TINY_W = 15, 35  # tiny_train_task's input: the smallest game input of the original (lol/timer-minutes)
TINY_CLASSES = ("a", "b", "c")
CPU = Engine(device="cpu")  # evaluate as validation in training does, on the CPU


@pytest.fixture
def tiny(tiny_train_files: Callable[..., tuple[Path, Path]]) -> tuple[Path, Path]:
    """(description JSON, data folder) with 13 train, 4 val and 4 test images per class."""
    return tiny_train_files({"train": 13, "val": 4, "test": 4})


def tiny_config(tiny: tuple[Path, Path], out: Path, **kw: object) -> TrainConfig:
    desc, data = tiny
    values: dict[str, object] = {"task": str(desc), "data": data, "out": out, "epochs": 2, "batch_size": 8,
                                 "lr": 3e-3, "progress": False, "device": "cpu", "curriculum": False,
                                 "recipe": "original"}  # no schedule that depends on the epochs
    values.update(kw)
    return TrainConfig(**values)


@pytest.mark.slow
@pytest.mark.parametrize("fold", [1, 3])
def test_train_counts_every_image_and_writes_files(tiny: tuple[Path, Path], tmp_path: Path, fold: int) -> None:
    # 39 training images, batch 8 (6 at f = 3): the last partial batch is padded, not dropped.
    result = train(tiny_config(tiny, tmp_path / "run", fold=fold))
    assert result.epochs == 2 and len(result.history) == 2
    for row in result.history:
        assert row["train_images"] == 39
        assert row["val_images"] == 12 and row["test_images"] == 12
        assert 0.0 <= row["test_top1"] <= row["test_top5"] <= 100.0
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.json", "config.json", "result.json"):
        assert (run / name).is_file(), name
    with open(run / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_top1", "train_top5", "train_loss", "val_top1", "test_top1", "test_top5", "test_loss"} <= set(rows[0])
    assert len(json.loads((run / "metrics.json").read_text())) == 2


@pytest.mark.slow
def test_checkpoint_is_self_describing(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    result = train(tiny_config(tiny, tmp_path / "run", fold=2))
    ckpt = load_checkpoint(result.best_checkpoint)  # weights_only=True inside
    config = ckpt["model_config"]
    assert config["fold"] == 2 and config["task"]["ClassNames"] == list(TINY_CLASSES)
    assert "preprocessing" not in ckpt  # the task description is the one source of input size and normalisation
    assert ckpt["epoch"] == result.best_epoch and "train_state" not in ckpt
    last = load_checkpoint(result.last_checkpoint)
    assert {"optimizer", "rng", "data_rng", "history", "best", "curriculum"} <= set(last["train_state"])
    model, cfg = model_from_checkpoint(result.best_checkpoint)
    assert cfg.fold == 2 and cfg.multiplier == pytest.approx(2**0.5) and cfg.image_size == (3, TINY_H, TINY_W)
    assert model(torch.zeros(1, 6, TINY_H, TINY_W)).shape == (1, 6)
    # A checkpoint of an older version, with its "preprocessing" entry, still loads and evaluates.
    old = save_checkpoint(tmp_path / "old.pt", {**ckpt, "preprocessing": {"image_size": [3, TINY_H, TINY_W],
                                                                          "scale": 1 / 255, "mean": None, "std": None}})
    assert evaluate(old, tiny[1], "test", engine=CPU)["top1"] == pytest.approx(result.best["test_top1"])


@pytest.mark.slow
def test_metrics_files_keep_their_columns_and_keys(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    result = train(tiny_config(tiny, tmp_path / "run", fold=2, epochs=1))
    keys = ["epoch", "classes", "lr", "train_top1", "train_top5", "train_loss", "train_images", "val_top1",
            "val_top5", "val_loss", "val_images", "val_top1_seen", "test_top1", "test_top5", "test_loss",
            "test_images", "seconds"]
    assert list(json.loads((tmp_path / "run" / "metrics.json").read_text())[0]) == keys
    assert list(result.history[0]) == keys and list(result.best) == keys
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == list(METRIC_COLUMNS) == [*keys[:3], "seconds", *keys[3:-1]]
    assert EpochMetrics.from_row(result.history[0]).to_row() == result.history[0]


def test_evaluate_matches_the_best_epoch(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    result = train(tiny_config(tiny, tmp_path / "run", fold=2, epochs=3))
    report = evaluate(result.best_checkpoint, tiny[1], "test", engine=CPU)
    assert report["images"] == 12
    assert report["top1"] == pytest.approx(result.best["test_top1"])
    assert report["loss"] == pytest.approx(result.best["test_loss"], rel=1e-4)
    val = evaluate(result.best_checkpoint, tiny[1], "val", engine=CPU)
    assert val["top1"] == pytest.approx(result.best["val_top1"])


@pytest.mark.slow
def test_training_learns_the_tiny_task(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    result = train(tiny_config(tiny, tmp_path / "run", fold=2, epochs=8, batch_size=4))
    assert result.best["val_top1"] > 50.0  # chance is 33.3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.slow
def test_default_recipe_trains_with_scaled_slot_warmup(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    config = tiny_config(tiny, tmp_path / "run", fold=2, epochs=8, batch_size=4, recipe=None, lr=None,
                         curriculum=None)
    result = train(config)
    recipe = result.settings["recipe"]
    assert (recipe["name"], recipe["slot_warmup"], recipe["lr_schedule"]) == ("recommended", 2, "cosine")
    assert result.settings["curriculum"] is None and result.epochs == 8
    assert result.best["val_top1"] > 50.0  # chance is 33.3


@pytest.mark.slow
def test_resume_continues_exactly(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    straight = train(tiny_config(tiny, tmp_path / "straight", fold=2, epochs=4))
    train(tiny_config(tiny, tmp_path / "split", fold=2, epochs=2))
    resumed = train(tiny_config(tiny, tmp_path / "split", fold=2, epochs=4, resume=True))
    assert resumed.resumed_from == 2 and resumed.epochs == 4
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    a = load_checkpoint(straight.last_checkpoint)["state_dict"]
    b = load_checkpoint(resumed.last_checkpoint)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[-1]["test_loss"] == straight.history[-1]["test_loss"]


def test_resume_of_a_finished_run_returns_its_result(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    first = train(tiny_config(tiny, tmp_path / "run", fold=2))
    again = train(tiny_config(tiny, tmp_path / "run", fold=2, resume=True))
    assert again.history == first.history and again.best_epoch == first.best_epoch


def test_existing_run_needs_resume_and_same_settings(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    train(tiny_config(tiny, tmp_path / "run", fold=2, epochs=1))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_config(tiny, tmp_path / "run", fold=2, epochs=1))
    with pytest.raises(ConfigError, match="different model_config"):
        train(tiny_config(tiny, tmp_path / "run", fold=4, epochs=1, resume=True))


@pytest.mark.slow
def test_curriculum_introduces_classes(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    result = train(tiny_config(tiny, tmp_path / "run", fold=2, epochs=3, curriculum=True, curriculum_gap=1))
    # N = 3: start max(3 // 10, f) = 2 classes, one more after 1 epoch.
    assert [r["classes"] for r in result.history] == [2, 3, 3]
    assert result.history[0]["train_images"] == 26  # only the two introduced classes
    assert result.history[0]["val_images"] == 12  # validation and test always cover every class


@pytest.mark.slow
def test_distillation_caches_teacher_logits(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    teacher = train(tiny_config(tiny, tmp_path / "teacher", fold=1, epochs=3))
    for loss in ("mse", "kl"):
        student = train(tiny_config(tiny, tmp_path / f"student-{loss}", fold=2, distill_from=teacher.best_checkpoint,
                                    distill_loss=loss))
        assert student.teacher is not None and student.teacher["cached"] is False
        assert (tmp_path / f"student-{loss}" / "teacher_logits.pt").is_file()
    resumed = train(tiny_config(tiny, tmp_path / "student-mse", fold=2, epochs=3,
                                distill_from=teacher.best_checkpoint, resume=True))
    assert resumed.teacher["cached"] is True


@pytest.mark.slow
def test_distillation_weight_mixes_soft_and_hard_targets(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    teacher = train(tiny_config(tiny, tmp_path / "teacher", fold=1, epochs=1))
    runs = {w: train(tiny_config(tiny, tmp_path / f"w{w}", fold=2, epochs=1, seed=3,
                                 distill_from=teacher.best_checkpoint, distill_loss="kl", distill_weight=w))
            for w in (0.0, 1.0)}
    plain = train(tiny_config(tiny, tmp_path / "plain", fold=2, epochs=1, seed=3))
    # Weight 0 trains on the labels alone, exactly like a run without a teacher; weight 1 does not.
    assert runs[0.0].final["train_loss"] == pytest.approx(plain.final["train_loss"], rel=1e-5)
    assert runs[1.0].final["train_loss"] != pytest.approx(plain.final["train_loss"], rel=1e-3)
    with pytest.raises(ConfigError, match="distillation weight"):
        plan_run(tiny_config(tiny, tmp_path / "bad", fold=2, distill_from=teacher.best_checkpoint, distill_weight=1.5))


def test_distillation_rejects_a_teacher_of_other_classes(tiny: tuple[Path, Path], tmp_path: Path,
                                                         tiny_train_files: Callable[..., tuple[Path, Path]]) -> None:
    teacher = train(tiny_config(tiny, tmp_path / "teacher", fold=1, epochs=1))
    other, data = tiny_train_files({"train": 2, "val": 1, "test": 1}, classes=("x", "y", "z"), root=tmp_path / "other")
    with pytest.raises(ConfigError, match="teacher"):
        train(TrainConfig(task=str(other), data=data, out=tmp_path / "s", fold=2, epochs=1, progress=False,
                          distill_from=teacher.best_checkpoint, device="cpu", curriculum=False))


def test_folder_without_val_draws_a_fixed_validation_split(
        tmp_path: Path, tiny_train_files: Callable[..., tuple[Path, Path]]) -> None:
    desc, data = tiny_train_files({"train": 10, "test": 2})
    result = train(TrainConfig(task=str(desc), data=data, out=tmp_path / "run", fold=2, epochs=1, progress=False,
                               device="cpu", curriculum=False))
    assert result.history[0]["val_images"] == 3 and result.history[0]["train_images"] == 27
    report = evaluate(result.best_checkpoint, data, "val", engine=CPU)
    assert report["images"] == 3 and report["top1"] == pytest.approx(result.history[0]["val_top1"])


# -- errors before any training starts ---------------------------------------------------------------


def test_batch_smaller_than_fold_is_an_error(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch size 3 is smaller than fold 4"):
        plan_run(tiny_config(tiny, tmp_path / "run", fold=4, batch_size=3))


def test_batch_size_is_rounded_down_to_the_fold() -> None:
    config = TrainConfig(task="lol/goldnumber-fraction", data=".", out=".", fold=3, progress=False, device="cpu",
                         recipe="original")
    assert plan_run(config).batch_size == 30  # the original's 32 -> 30 at f = 3
    default = TrainConfig(task="lol/goldnumber-fraction", data=".", out=".", fold=3, progress=False, device="cpu")
    assert plan_run(default).batch_size == 126  # the recommended 128 -> 126


def test_curriculum_that_cannot_finish_is_scaled_to_fit(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    config = TrainConfig(task="lol/goldnumber-fraction", data=".", out=".", fold=2, epochs=20, device="cpu",
                         recipe="original")
    plan = plan_run(config)  # the original's curriculum would need 541 epochs
    assert plan.curriculum.complete_epoch < 20 and "--curriculum-gap" in plan.notices[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "lol/no-such-task"], "unknown task"),
    (["train", "{desc}", "--fold", "4", "--batch-size", "2"], "smaller than fold 4"),
    (["train", "{desc}", "--data", "{tmp}/empty"], "no train/ folder"),
    (["train", "{desc}", "--data", "{tmp}/noclass"], "class"),
    (["train", "{desc}", "--data", "{tmp}/wrong/data"], "class"),
    (["train", "{desc}", "--device", "tpu"], "unknown device"),
])
def test_cli_errors_before_training(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    tiny_train_files: Callable[..., tuple[Path, Path]], argv: list[str],
                                    message: str) -> None:
    desc, data = tiny
    (tmp_path / "empty").mkdir()
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    tiny_train_files({"train": 1, "val": 1, "test": 1}, classes=("a", "b", "zzz"), root=tmp_path / "wrong")
    argv = [a.format(desc=desc, tmp=tmp_path) for a in argv]
    if argv[1] == str(desc):
        argv[1:2] = ["--description", str(desc)]
    if "--data" not in argv:
        argv += ["--data", str(data)]
    code = main([*argv, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_data_errors_name_the_problem(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        train(tiny_config(tiny, tmp_path / "run", data=tmp_path / "missing"))


# -- evaluate with an engine ---------------------------------------------------------------------------


def test_evaluate_on_an_engine_agrees_with_the_default(tiny_task: TaskSpec, tiny_checkpoint: Callable[..., Path],
                                                       image_folder: Callable[..., Path]) -> None:
    onnx = Engine("onnxruntime")
    ok, reason = onnx.is_available()
    if not ok:
        pytest.skip(f"onnxruntime: {reason}")
    ckpt, data = tiny_checkpoint(2), image_folder(tiny_task, {"train": 1, "test": 7})
    default = evaluate(ckpt, data, "test", batch_size=6)
    deployed = evaluate(ckpt, data, "test", engine=onnx, batch_size=6)
    assert deployed["images"] == default["images"] == 21
    assert (deployed["top1"], deployed["top5"]) == (default["top1"], default["top5"])
    assert deployed["loss"] == pytest.approx(default["loss"], rel=1e-4)


def test_eval_outputs_give_each_images_top1_class_in_the_splits_order(
        tiny_task: TaskSpec, tiny_checkpoint: Callable[..., Path], image_folder: Callable[..., Path]) -> None:
    model, _ = model_from_checkpoint(tiny_checkpoint(1))  # f = 1: an image's logits do not depend on its batch
    split = load_split(image_folder(tiny_task, {"train": 1, "test": 5}), tiny_task, "test")
    outputs = evaluate_split(CPU.prepare(model, 4), split, tiny_task, batch_size=4)
    with torch.no_grad():
        logits = model.eval()(to_model_input(split.images, tiny_task, layout="nchw"))
    assert outputs.predicted.dtype == torch.int64 and outputs.predicted.shape == (15,)
    assert torch.equal(outputs.predicted, logits.argmax(1))
    assert torch.equal(outputs.hit1, outputs.predicted == split.labels)
