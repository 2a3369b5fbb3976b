"""Recipes, curriculum schedule and distillation losses: pure functions, no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from foldedcnns.cli.main import main
from foldedcnns.data.model_input import to_model_input
from foldedcnns.errors import ConfigError
from foldedcnns.models import build_model, get_task, load_description
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.runtime.engine import Engine
from foldedcnns.training import distill
from foldedcnns.training.config import TrainConfig, check_resume, plan_run
from foldedcnns.training.curriculum import CurriculumSchedule, curriculum_schedule, fit_schedule
from foldedcnns.training.distill import cached_teacher_logits, distill_loss
from foldedcnns.training.recipes import apply_overrides, recipe_for
from foldedcnns.training.rng import get_rng_state, set_rng_state


@pytest.mark.parametrize(("task", "group", "optimizer", "lr", "epochs", "schedule"), [
    ("lol/goldnumber-fraction", "game", "adam", 1e-4, 1500, "none"),
    ("sot/timer3", "game", "adam", 1e-4, 1500, "none"),
    ("noscope/coral", "noscope", "rmsprop", 0.001 / 1.5, 50, "none"),
    ("cifar10", "cifar10", "adam", 1e-4, 1500, "step"),
    ("cifar100", "cifar100", "adam", 1e-4, 1500, "step"),
])
def test_original_recipes(task: str, group: str, optimizer: str, lr: float, epochs: int, schedule: str) -> None:
    recipe = recipe_for(get_task(task), fold=2, name="original")
    assert (recipe.name, recipe.optimizer, recipe.epochs, recipe.lr_schedule) == (group, optimizer, epochs, schedule)
    assert recipe.lr == pytest.approx(lr) and recipe.batch_size == 32


def test_cifar_recipes_hold_out_5000_and_augment() -> None:
    for task in ("cifar10", "cifar100"):
        recipe = recipe_for(get_task(task), fold=4, name="original")
        assert recipe.val_split == 5000 and recipe.augment == "crop_flip"
        assert (recipe.lr_step_size, recipe.lr_gamma) == (200, 0.5)


def test_timer_minutes_fold4_variant() -> None:
    spec = get_task("lol/timer-minutes")
    assert recipe_for(spec, 2, "original").epochs == 1500
    assert recipe_for(spec, 4, "game").epochs == 1500  # a recipe named explicitly has no task exceptions
    slow = recipe_for(spec, 4, "original")
    assert (slow.epochs, slow.curriculum_gap, slow.curriculum_divisor) == (3000, 120, 20)


def test_overrides_replace_fields_and_reject_unknown_ones() -> None:
    recipe = recipe_for(get_task("lol/goldnumber-fraction"), 1)
    changed = apply_overrides(recipe, {"lr": 1e-3, "epochs": None})
    assert changed.lr == 1e-3 and changed.epochs == recipe.epochs
    with pytest.raises(ConfigError, match="unknown recipe field 'learning_rate'"):
        apply_overrides(recipe, {"learning_rate": 1})
    with pytest.raises(ConfigError, match="unknown optimizer"):
        apply_overrides(recipe, {"optimizer": "lbfgs"})
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        recipe_for(get_task("cifar10"), 1, "nope")
    with pytest.raises(ConfigError, match=r"unknown recipe 'orginal' \(did you mean 'original'\?\)"):
        recipe_for(get_task("cifar10"), 1, "orginal")
    with pytest.raises(ConfigError, match=r"'slot_warmpu' \(did you mean 'slot_warmup'\?\)"):
        apply_overrides(recipe, {"slot_warmpu": 3})


@pytest.mark.parametrize(("batch", "fold", "expected"), [(32, 1, 32), (32, 2, 32), (32, 3, 30), (32, 4, 32),
                                                         (7, 4, 4), (4, 4, 4)])
def test_batch_size_rounds_down_to_the_fold(batch: int, fold: int, expected: int) -> None:
    config = TrainConfig(task="lol/goldnumber-fraction", data=".", out=".", fold=fold, batch_size=batch, device="cpu",
                         recipe="original")
    assert plan_run(config).batch_size == expected


def test_batch_smaller_than_fold() -> None:
    with pytest.raises(ConfigError, match="smaller than fold 4"):
        plan_run(TrainConfig(task="lol/goldnumber-fraction", data=".", out=".", fold=4, batch_size=3, device="cpu"))


# -- curriculum (reference section 4.5 table) ------------------------------------------------------


@pytest.mark.parametrize(("task", "fold", "start", "step", "complete"), [
    ("lol/goldnumber-fraction", 2, 2, 1, 540), ("lol/goldnumber-fraction", 3, 3, 1, 480),
    ("lol/goldnumber-fraction", 4, 4, 1, 420), ("apex/squad_count_v2", 2, 2, 2, 600),
    ("apex/squad_count_v2", 4, 4, 2, 540), ("sot/coin_count-digits_3_4-v2", 2, 2, 1, 780),
    ("sot/coin_count-digits_3_4-v2", 4, 4, 1, 660), ("sot/timer3", 2, 2, 2, 780), ("sot/timer3", 4, 4, 2, 720),
    ("lol/goldnumber-int", 4, 11, 11, 600), ("lol/timer-minutes", 2, 6, 6, 600),
])
def test_curriculum_matches_the_original(task: str, fold: int, start: int, step: int, complete: int) -> None:
    schedule = curriculum_schedule(get_task(task).num_classes, fold)
    assert (schedule.initial, schedule.step, schedule.gap) == (start, step, 60)
    assert schedule.complete_epoch == complete
    assert schedule.classes_at(complete) == schedule.num_classes
    assert schedule.classes_at(complete - 1) < schedule.num_classes


def test_curriculum_timer_minutes_fold4() -> None:
    recipe = recipe_for(get_task("lol/timer-minutes"), 4, "original")
    schedule = curriculum_schedule(62, 4, divisor=recipe.curriculum_divisor, gap=recipe.curriculum_gap)
    assert (schedule.initial, schedule.step, schedule.gap, schedule.complete_epoch) == (4, 3, 120, 2400)


def test_curriculum_steps_every_gap() -> None:
    schedule = CurriculumSchedule(num_classes=11, initial=4, step=1, gap=3)
    assert [schedule.classes_at(e) for e in range(8)] == [4, 4, 4, 5, 5, 5, 6, 6]
    assert schedule.classes_at(10_000) == 11
    with pytest.raises(ConfigError, match="gap"):
        CurriculumSchedule(num_classes=11, initial=4, step=1, gap=0)


def test_curriculum_never_starts_with_more_classes_than_exist() -> None:
    assert curriculum_schedule(3, 4).initial == 3
    assert curriculum_schedule(3, 4).complete_epoch == 0


# -- distillation ----------------------------------------------------------------------------------


def test_mse_distillation_is_the_originals_mse_loss() -> None:
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    per_image = distill_loss(student, teacher, "mse")
    assert per_image.shape == (6,)
    assert per_image.mean().item() == pytest.approx(nn.MSELoss()(student, teacher).item(), rel=1e-6)


def test_kl_distillation() -> None:
    teacher = torch.randn(5, 7)
    assert torch.allclose(distill_loss(teacher.clone(), teacher, "kl", 3.0), torch.zeros(5), atol=1e-6)
    student = torch.randn(5, 7)
    loss = distill_loss(student, teacher, "kl", 2.0)
    p = torch.softmax(teacher / 2.0, 1)
    expected = (p * (p.log() - torch.log_softmax(student / 2.0, 1))).sum(1) * 4.0
    assert torch.allclose(loss, expected, atol=1e-5) and bool((loss > 0).all())


def test_distillation_errors() -> None:
    with pytest.raises(ValueError, match="differ"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="unknown distillation loss"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), "l1")
    with pytest.raises(ConfigError, match="temperature"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), "kl", 0.0)


@pytest.mark.slow
def test_teacher_logits_are_computed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = build_model("lol/goldnumber-fraction", fold=1)
    path = save_checkpoint(tmp_path / "teacher.pt", make_checkpoint(teacher))
    student = build_model("lol/goldnumber-fraction", fold=4).config
    images = torch.randint(0, 256, (5, 3, 22, 52), dtype=torch.uint8)
    calls = []
    compute = distill.compute_logits

    def counted(runner, x, task, batch_size):
        calls.append(x.shape[0])
        return compute(runner, x, task, batch_size)

    monkeypatch.setattr(distill, "compute_logits", counted)
    first, info = cached_teacher_logits(tmp_path, path, student, images, batch_size=2)
    assert first.shape == (5, 11) and info["cached"] is False and calls == [5]
    with torch.no_grad():
        expected = teacher.eval()(to_model_input(images, student.task, layout="nchw"))
    assert torch.allclose(first, expected, atol=1e-5)
    second, info = cached_teacher_logits(tmp_path, path, student, images)
    assert info["cached"] is True and calls == [5] and torch.equal(first, second)
    _, info = cached_teacher_logits(tmp_path, path, student, images.flip(0), Engine("channels-last"))
    assert info["cached"] is False and calls == [5, 5]  # other images: the stale cache is replaced


# -- RNG state -------------------------------------------------------------------------------------


def test_rng_state_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


# -- the default recipe: recommended, fitted to the epochs ------------------------------------------


def test_default_recipe_is_recommended_with_family_extras() -> None:
    game = recipe_for(get_task("lol/goldnumber-fraction"), 4)
    assert (game.name, game.optimizer, game.lr, game.lr_schedule, game.epochs, game.batch_size) == \
        ("recommended", "adam", 1e-3, "cosine", 100, 128)
    assert game.curriculum is False and game.slot_warmup_fraction == 0.25 and game.augment == "none"
    cifar = recipe_for(get_task("cifar10"), 2)
    assert (cifar.name, cifar.augment, cifar.val_split) == ("recommended", "crop_flip", 5000)
    assert recipe_for(get_task("noscope/coral"), 2).augment == "none"


def _plan(**kw: object):
    values: dict[str, object] = {"task": "lol/goldnumber-fraction", "data": ".", "out": ".", "device": "cpu"}
    values.update(kw)
    return plan_run(TrainConfig(**values))


@pytest.mark.parametrize(("epochs", "warmup"), [(1, 1), (3, 1), (8, 2), (30, 8), (60, 15), (100, 25), (1500, 375)])
def test_slot_warmup_scales_with_the_epochs(epochs: int, warmup: int) -> None:
    plan = _plan(fold=4, epochs=epochs)
    assert plan.recipe.slot_warmup == warmup
    assert plan.curriculum is None and plan.notices == ()


def test_slot_warmup_explicit_or_unfolded() -> None:
    assert _plan(fold=1, epochs=100).recipe.slot_warmup == 0
    assert _plan(fold=2, epochs=100, slot_warmup=3).recipe.slot_warmup == 3
    assert _plan(fold=2, epochs=100, slot_warmup=0).recipe.slot_warmup == 0  # 0 switches it off
    assert _plan(fold=2, epochs=100, recipe="quick").recipe.slot_warmup == 10  # fixed in the quick recipe
    assert _plan(fold=2, epochs=100, recipe="original").recipe.slot_warmup == 0


def test_original_recipe_keeps_its_curriculum() -> None:
    plan = _plan(fold=4, recipe="original")
    assert plan.recipe.name == "game" and plan.recipe.epochs == 1500
    assert (plan.curriculum.initial, plan.curriculum.step, plan.curriculum.gap) == (4, 1, 60)
    assert plan.notices == ()


def test_curriculum_too_long_is_scaled_to_fit_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="foldedcnns.training.config"):
        plan = _plan(fold=4, epochs=100, recipe="original")  # the original's curriculum ends in epoch 421
    schedule = plan.curriculum
    assert (schedule.initial, schedule.step, schedule.gap) == (4, 1, 5)  # 7 steps in 40 % of 100 epochs
    assert schedule.complete_epoch == 35 and schedule.classes_at(99) == 11
    assert len(plan.notices) == 1 and "epoch 421 of 100; scaled to fit" in plan.notices[0]
    assert any("scaled to fit" in r.getMessage() for r in caplog.records)
    asked = _plan(fold=2, epochs=100, curriculum=True)  # the default recipe with --curriculum
    assert asked.curriculum.complete_epoch < 100 and "scaled to fit" in asked.notices[0]


def test_curriculum_that_fits_is_kept() -> None:
    plan = _plan(fold=4, epochs=100, curriculum=True, curriculum_gap=10)
    assert plan.curriculum.gap == 10 and plan.curriculum.complete_epoch == 70 and plan.notices == ()


def test_fit_schedule() -> None:
    schedule = curriculum_schedule(11, 4)  # 4 classes, +1 every 60 epochs
    assert fit_schedule(schedule, 1000) is schedule
    few = fit_schedule(schedule, 5)  # 2 epochs of budget for 7 missing classes: +4 per epoch
    assert (few.gap, few.step, few.complete_epoch) == (1, 4, 2)
    assert fit_schedule(schedule, 2).complete_epoch == 1
    assert fit_schedule(schedule, 1) is None
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        fit_schedule(schedule, 0)


def test_one_epoch_run_trains_every_class(caplog: pytest.LogCaptureFixture) -> None:
    plan = _plan(fold=2, epochs=1, recipe="original")
    assert plan.curriculum is None and "every class from the start" in plan.notices[0]


def test_recipe_values_are_type_checked() -> None:
    recipe = recipe_for(get_task("lol/goldnumber-fraction"), 1)
    for field, value, message in [("lr", "fast", "'lr' must be a number"), ("epochs", 2.5, "'epochs' must be an "
                                  "integer"), ("curriculum", 1, "'curriculum' must be true or false"),
                                  ("optimizer", 3, "'optimizer' must be a string")]:
        with pytest.raises(ConfigError, match=message):
            apply_overrides(recipe, {field: value})
    with pytest.raises(ConfigError, match=r"slot warm-up fraction must be in \[0, 0.5\]"):
        apply_overrides(recipe, {"slot_warmup_fraction": 0.7})


def test_description_recipe_errors_name_the_file(tmp_path: Path) -> None:
    desc = {"out-h": 22, "out-w": 52, "ClassNames": ["a", "b"], "recipe": {"lr": "fast"}}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(desc), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}: 'recipe': recipe field 'lr' must be a number"):
        recipe_for(load_description(path), 1)
    desc["recipe"] = {"epoch": 5}
    path.write_text(json.dumps(desc), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mine.json: 'recipe': unknown recipe field 'epoch' \(did you mean 'epochs'"):
        recipe_for(load_description(path), 1)
    desc["recipe"] = {"epochs": 7}
    path.write_text(json.dumps(desc), encoding="utf-8")
    assert recipe_for(load_description(path), 1).epochs == 7


def test_resume_may_change_the_epochs_and_so_the_warmup() -> None:
    short, long = _plan(fold=4, epochs=20), _plan(fold=4, epochs=40)
    assert short.recipe.slot_warmup != long.recipe.slot_warmup
    check_resume(short.settings(), long.settings(), Path("run"))
    with pytest.raises(ConfigError, match="different recipe"):
        check_resume(short.settings(), _plan(fold=4, epochs=40, lr=0.1).settings(), Path("run"))


def test_train_help_names_the_default_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Default 'recommended'" in text and "'original'" in text and "docs/training.md" in text
