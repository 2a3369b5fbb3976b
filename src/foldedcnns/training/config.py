"""What a training run is: :class:`TrainConfig` (as asked), :class:`RunPlan` (resolved and checked).

:func:`plan_run` resolves a config against its task and recipe and checks every setting before any
data is read, so a sweep can check all its runs before the first starts. :func:`check_resume`
compares a run directory's saved settings with the current ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from foldedcnns.core.folding import round_batch
from foldedcnns.errors import ConfigError
from foldedcnns.models.registry import ModelConfig, build_model, get_task
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.device import DEVICE_HELP, resolve_device
from foldedcnns.training.curriculum import CurriculumSchedule, curriculum_schedule, fit_schedule
from foldedcnns.training.distill import (
    DEFAULT_DISTILL_LOSS,
    DEFAULT_DISTILL_WEIGHT,
    DEFAULT_TEMPERATURE,
    DISTILL_LOSSES,
)
from foldedcnns.training.evaluation import DEFAULT_EVAL_BATCH
from foldedcnns.training.recipes import (
    RECOMMENDED_EPOCHS,
    Recipe,
    apply_overrides,
    fit_to_epochs,
    list_recipes,
    option,
    recipe_for,
    recipe_options,
)
from foldedcnns.training.slots import SlotWarmup

log = logging.getLogger(__name__)

# Settings that may differ between a run and its resumption (the slot warm-up may follow the epochs).
RESUMABLE_CHANGES = ("epochs", "slot_warmup")


RECIPE_HELP = ("training recipe. Default 'recommended': Adam 1e-3, cosine schedule, batch 128, "
               f"{RECOMMENDED_EPOCHS} epochs, no curriculum, and for f > 1 slot warm-up for 1/4 of the epochs plus "
               "a blend of another 1/4, at any --epochs; it is the default because it trains folded models close "
               "to f = 1's Top-1 at equal epochs (docs/training.md has the figures). 'original': the original "
               "release's recipe for the task's family (game: Adam 1e-4, 1,500 epochs, curriculum when folded; "
               "noscope; cifar10/cifar100), also by name; 'quick': 30-epoch CPU runs")


@dataclass
class TrainConfig:
    """One training run. ``None`` fields take the recipe's value (see :mod:`foldedcnns.training.recipes`).

    ``task`` is a task name (``foldedcnns models``) or a description JSON path; ``data`` an image
    folder with train/val/test (or a CIFAR archive); ``out`` the run directory. ``batch_size`` is in
    images and is rounded down to a multiple of ``fold``. ``device`` is ``auto``, ``cpu`` or ``cuda[:i]``;
    ``amp`` (mixed precision) defaults to on for CUDA. ``curriculum_gap`` (epochs between class steps)
    lets short runs use the curriculum. ``recipe_overrides`` sets any recipe field by name (the CLI puts
    there the recipe options, :func:`~foldedcnns.training.recipes.recipe_options`, without a field here).
    Fields with ``option`` metadata are ``train``/``sweep`` flags whose defaults are these fields' defaults.
    """

    task: str
    data: str | Path
    out: str | Path
    fold: int = 1
    multiplier: float | None = None
    recipe: str | None = field(default=None, metadata=option(RECIPE_HELP, choices=tuple(list_recipes())))
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    lr_schedule: str | None = None
    curriculum: bool | None = None
    curriculum_gap: int | None = None
    distill_from: str | Path | None = field(default=None, metadata=option(
        "teacher checkpoint whose logits are the targets", metavar="CKPT"))
    distill_loss: str = field(default=DEFAULT_DISTILL_LOSS, metadata=option(
        "MSE on logits (the original) or KL divergence with a temperature", choices=DISTILL_LOSSES))
    distill_temperature: float = field(default=DEFAULT_TEMPERATURE, metadata=option(
        "distillation temperature for --distill-loss kl", flag="--temperature"))
    distill_weight: float = field(default=DEFAULT_DISTILL_WEIGHT, metadata=option(
        "loss = W * distillation + (1 - W) * cross-entropy on the labels (original: 1)", metavar="W"))
    slot_warmup: int | None = None
    device: str = field(default="auto", metadata=option(DEVICE_HELP))
    amp: bool | None = field(default=None, metadata=option("automatic mixed precision (default: on with CUDA)"))
    resume: bool = False
    seed: int = field(default=0, metadata=option("random seed (model init, shuffling, augmentation)"))
    eval_batch_size: int = field(default=DEFAULT_EVAL_BATCH, metadata=option("images per eval batch"))
    progress: bool = field(default=True, metadata=option("no progress bars on stderr", flag="--no-progress"))
    channels_last: bool = True
    recipe_overrides: dict[str, Any] = field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """The recipe options this run sets: the same-named fields and ``recipe_overrides`` (None: the
        recipe's value). Both setting one option is a :class:`ConfigError`."""
        named = {f.name: getattr(self, f.name) for f in recipe_options() if hasattr(self, f.name)}
        both = sorted(k for k, v in self.recipe_overrides.items() if v is not None and named.get(k) is not None)
        if both:
            raise ConfigError(f"{', '.join(both)} set both as a field and in recipe_overrides; set it once")
        return {**named, **{k: v for k, v in self.recipe_overrides.items() if v is not None or k not in named}}


def run_options() -> tuple[dataclasses.Field, ...]:
    """The :class:`TrainConfig` fields that are training options of their own (not recipe fields)."""
    return tuple(f for f in dataclasses.fields(TrainConfig) if "help" in f.metadata)


@dataclass(frozen=True)
class RunPlan:
    """A :class:`TrainConfig` resolved against the task and its recipe; everything checked.

    ``notices``: what planning changed on its own (a curriculum fitted to the epochs, slot warm-up
    switched off); each is also logged as a warning.
    """

    config: TrainConfig
    model_name: str
    model_config: ModelConfig
    recipe: Recipe
    batch_size: int
    curriculum: CurriculumSchedule | None
    device: torch.device
    amp: bool
    notices: tuple[str, ...] = ()

    @property
    def spec(self) -> TaskSpec:
        return self.model_config.task

    @property
    def fold(self) -> int:
        return self.model_config.fold

    def settings(self) -> dict[str, Any]:
        """What defines the run (stored in checkpoints and config.json; compared on resume)."""
        cfg = self.config
        distill = bool(cfg.distill_from)
        return {"task": self.model_name, "model_config": self.model_config.to_dict(),
                "recipe": self.recipe.to_dict(), "batch_size": self.batch_size,
                "curriculum": None if self.curriculum is None else self.curriculum.to_dict(),
                "distill_from": None if cfg.distill_from is None else str(cfg.distill_from),
                "distill_loss": cfg.distill_loss if distill else None,
                "distill_temperature": cfg.distill_temperature if distill and cfg.distill_loss == "kl" else None,
                "distill_weight": cfg.distill_weight if distill else None,
                "seed": cfg.seed, "data": str(cfg.data)}


def plan_run(config: TrainConfig) -> RunPlan:
    """Resolve and check a run's settings before any data is read or any training starts."""
    spec = get_task(config.task)
    model_name = str(config.task) if not str(config.task).endswith(".json") else spec.name
    probe = build_model(config.task, fold=config.fold, multiplier=config.multiplier, init=False)
    model_config: ModelConfig = probe.config
    fold = model_config.fold
    recipe = recipe_for(spec, fold, config.recipe)
    overrides = config.overrides()
    recipe = apply_overrides(recipe, overrides)
    recipe = fit_to_epochs(recipe, fold)
    notices: list[str] = []
    if recipe.batch_size < fold:
        raise ConfigError(f"batch size {recipe.batch_size} is smaller than fold {fold}; pass --batch-size of at "
                          f"least {fold} (a multiple of the fold)")
    batch_size = round_batch(recipe.batch_size, fold, "down")
    try:
        SlotWarmup(probe, fold, recipe.slot_warmup)  # checks that every layer can be split
    except ConfigError:
        if overrides.get("slot_warmup") is not None:
            raise
        if recipe.slot_warmup:
            notices.append(f"slot warm-up is off: a layer of this model has fewer than {fold} channels")
        recipe = apply_overrides(recipe, {"slot_warmup": 0})
    if config.eval_batch_size < 1:
        raise ConfigError(f"eval batch size must be >= 1, got {config.eval_batch_size}")
    schedule = _curriculum(bool(overrides.get("curriculum")), spec, fold, recipe, notices)
    if config.distill_from is not None:
        check_distillation(config)
    device = resolve_device(config.device)
    amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    if amp and device.type != "cuda":
        raise ConfigError("mixed precision (--amp) needs a CUDA device; pass --device cuda or drop --amp")
    for notice in notices:
        log.warning("%s", notice)
    return RunPlan(config, model_name, model_config, recipe, batch_size, schedule, device, amp, tuple(notices))


def _curriculum(asked: bool, spec: TaskSpec, fold: int, recipe: Recipe,
                notices: list[str]) -> CurriculumSchedule | None:
    """The curriculum of the run (None when off; ``asked``: switched on explicitly, also at fold 1); one
    that cannot reach every class in time is fitted to the epochs
    (:func:`~foldedcnns.training.curriculum.fit_schedule`) with a notice."""
    if not ((recipe.curriculum and fold > 1) or asked):
        return None
    schedule = curriculum_schedule(spec.num_classes, fold, divisor=recipe.curriculum_divisor,
                                   gap=recipe.curriculum_gap)
    if schedule.complete_epoch < recipe.epochs:
        return schedule
    fitted = fit_schedule(schedule, recipe.epochs)
    was = (f"the curriculum would add the last of {spec.num_classes} classes only in epoch "
           f"{schedule.complete_epoch + 1} of {recipe.epochs}")
    if fitted is None:
        notices.append(f"{was}; a {recipe.epochs}-epoch run trains on every class from the start instead")
    else:
        notices.append(f"{was}; scaled to fit: {fitted.step} more class(es) every {fitted.gap} epoch(s) from "
                       f"{fitted.initial}, all classes from epoch {fitted.complete_epoch + 1} "
                       "(set --curriculum-gap, --epochs or --no-curriculum to choose)")
    return fitted


def check_distillation(config: TrainConfig, *, teacher_ready: bool = True) -> None:
    """The distillation options of ``config``; the teacher checkpoint must exist unless not ``teacher_ready``
    (a sweep's fold-1 teacher is checked before it is trained)."""
    if config.distill_loss not in DISTILL_LOSSES:
        raise ConfigError(f"unknown distillation loss {config.distill_loss!r}; choose one of "
                          f"{', '.join(DISTILL_LOSSES)}")
    if not 0.0 <= config.distill_weight <= 1.0:
        raise ConfigError(f"distillation weight must be in [0, 1], got {config.distill_weight}; "
                          "1 trains on the teacher's logits only (the original), 0 on the labels only")
    if teacher_ready and not Path(config.distill_from).is_file():
        raise ConfigError(f"teacher checkpoint {config.distill_from} does not exist; pass --distill-from with "
                          "a checkpoint written by 'foldedcnns train'")


def check_resume(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """A run may resume only with the settings it was started with (``--epochs`` and ``--data`` may change)."""
    for key, value in current.items():
        old = saved.get(key)
        if key == "recipe":
            old = {k: v for k, v in (old or {}).items() if k not in RESUMABLE_CHANGES}
            value = {k: v for k, v in value.items() if k not in RESUMABLE_CHANGES}
        if key == "data":
            continue
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
            raise ConfigError(f"{run_dir} was trained with a different {key}; resume with the same options "
                              "(only --epochs may change) or choose another --out")
