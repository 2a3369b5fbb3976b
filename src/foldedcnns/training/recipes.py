"""Training recipes: the recommended default and the original's recipes per data-set group, as data.

A :class:`Recipe` is looked up once per run with :func:`recipe_for` (recipe name, task family and
name, fold), overridden field by field from the command line (:func:`apply_overrides`) and then
fitted to the run's epochs (:func:`fit_to_epochs`).

The default is ``recommended`` (not from the original): Adam 1e-3 with a cosine schedule, batch 128,
100 epochs, no curriculum and, for a folded model, slot warm-up (:mod:`foldedcnns.training.slots`)
for a quarter of the epochs and a blend of another quarter, whatever ``--epochs`` is. It trains
f = 2 and f = 4 to within about a point of f = 1 at equal epochs (docs/training.md has the figures);
the original's recipes need 1,500 epochs and a curriculum for that.

``original`` picks the original release's recipe by task and family (reference section 4.2,
hard-coded numbers in section 8); each is also available by its own name:

============  =========================  ========  ============  =======  ============================
group         optimiser                  epochs    LR schedule   batch    extras
============  =========================  ========  ============  =======  ============================
game          Adam 1e-4, wd 1e-5         1500      none          32       curriculum when folded
noscope       RMSprop 0.001/1.5          50        none          32
cifar10       Adam 1e-4, wd 1e-5         1500      StepLR 200/.5 32       crop 4 + flip, 5000 val
cifar100      Adam 1e-4, wd 1e-5         1500      StepLR 200/.5 32       crop 4 + flip, 5000 val
============  =========================  ========  ============  =======  ============================

``quick`` (Adam 1e-3 cosine, 30 epochs, batch 128, slot warm-up 10) is for short CPU runs. Under
``original``, lol/timer-minutes at fold 4 runs 3000 epochs with the slower curriculum (start and step
N//20, a class step every 120 epochs), as in the original (:data:`TASK_OVERRIDES`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.models.spec import TaskSpec
from foldedcnns.utils.text import did_you_mean

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
LR_SCHEDULES = ("none", "step", "cosine")
AUGMENTATIONS = ("none", "crop_flip")

ORIGINAL_BATCH_SIZE = 32
ORIGINAL_ADAM_LR = 1e-4
ORIGINAL_WEIGHT_DECAY = 1e-5
NOSCOPE_RMSPROP_LR = 0.001 / 1.5
GAME_EPOCHS = 1500
NOSCOPE_EPOCHS = 50
CIFAR_EPOCHS = 1500
CIFAR_STEP_SIZE = 200
CIFAR_STEP_GAMMA = 0.5
CIFAR_VAL_IMAGES = 5000
CIFAR_CROP_PADDING = 4
CURRICULUM_GAP = 60
CURRICULUM_DIVISOR = 10
VAL_FRACTION = 0.1
QUICK_LR = 1e-3
QUICK_EPOCHS = 30
QUICK_BATCH_SIZE = 128
QUICK_SLOT_WARMUP = 10
RECOMMENDED_LR = 1e-3
RECOMMENDED_EPOCHS = 100
RECOMMENDED_BATCH_SIZE = 128
RECOMMENDED_SLOT_WARMUP_FRACTION = 0.25  # of the epochs, tied; as many again to blend
MAX_SLOT_WARMUP_FRACTION = 0.5  # warm-up and blend then take the whole run
DEFAULT_RECIPE = "recommended"
ORIGINAL = "original"  # picks the original's recipe by task and family


def option(help: str, *, flag: str | None = None, metavar: str | None = None,
           choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Field metadata that makes a :class:`Recipe` (or ``TrainConfig``) field a training option: the
    ``train``/``sweep`` flag (``flag``, default ``--`` + the field name with dashes) with this ``help``,
    and (for a recipe field) an override :func:`~foldedcnns.training.config.plan_run` applies. One field
    with this metadata is all a new option needs."""
    return {"help": help, "flag": flag, "metavar": metavar, "choices": choices}


@dataclass(frozen=True)
class Recipe:
    """How to train one data-set group. Units: learning rates per step, gaps and epochs in epochs.

    ``val_split`` is used only when the data has no validation split of its own: an int is a number of
    images, a float a fraction of the training images (drawn with a fixed seed, so every run and
    ``evaluate`` see the same split). ``curriculum`` switches curriculum learning on for folded models
    (fold > 1) only, as the original did; ``curriculum_divisor`` sets the start and step size
    (``N // divisor`` classes) and ``curriculum_gap`` the epochs between steps. ``slot_warmup`` is the
    number of epochs a folded model trains as f separate per-image CNNs first
    (:mod:`foldedcnns.training.slots`; 0 = off, as in the original). Fields with :func:`option` metadata
    are training options (:func:`recipe_options`).
    """

    name: str
    optimizer: str = field(default="adam", metadata=option("optimizer", choices=OPTIMIZERS))
    lr: float = field(default=ORIGINAL_ADAM_LR, metadata=option("learning rate"))
    weight_decay: float = field(default=ORIGINAL_WEIGHT_DECAY, metadata=option("weight decay"))
    momentum: float = 0.0
    epochs: int = field(default=GAME_EPOCHS, metadata=option(
        f"number of epochs (default: the recipe's; recommended: {RECOMMENDED_EPOCHS})"))
    batch_size: int = field(default=ORIGINAL_BATCH_SIZE, metadata=option(
        "images per batch, rounded down to a multiple of the fold"))
    lr_schedule: str = field(default="none", metadata=option("learning-rate schedule, stepped per epoch",
                                                             choices=LR_SCHEDULES))
    lr_step_size: int = CIFAR_STEP_SIZE
    lr_gamma: float = CIFAR_STEP_GAMMA
    val_split: float | int = VAL_FRACTION
    augment: str = "none"
    crop_padding: int = CIFAR_CROP_PADDING
    curriculum: bool = field(default=False, metadata=option(
        "introduce classes over the epochs (default: off; on for folded game tasks with --recipe original); a "
        "curriculum too long for --epochs is scaled to fit, with a notice"))
    curriculum_gap: int = field(default=CURRICULUM_GAP, metadata=option(
        f"epochs between curriculum steps (original: {CURRICULUM_GAP})", metavar="EPOCHS"))
    curriculum_divisor: int = CURRICULUM_DIVISOR
    slot_warmup: int = field(default=0, metadata=option(
        "epochs a folded model first trains as f separate per-image CNNs, then as many to blend them (default: "
        "the recipe's; recommended: 1/4 of the epochs; 0 = off, as the original)", metavar="EPOCHS"))
    slot_warmup_fraction: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        values = dict(data)
        values["notes"] = tuple(values.get("notes", ()))
        return validate_recipe(cls(**values))


RECIPES: dict[str, Recipe] = {
    "recommended": Recipe(name="recommended", lr=RECOMMENDED_LR, epochs=RECOMMENDED_EPOCHS,
                          batch_size=RECOMMENDED_BATCH_SIZE, lr_schedule="cosine",
                          slot_warmup_fraction=RECOMMENDED_SLOT_WARMUP_FRACTION,
                          notes=("the default: slot warm-up and blend each 1/4 of the epochs when folded, "
                                 "no curriculum; not from the original",)),
    "game": Recipe(name="game", curriculum=True,
                   notes=("original: Adam 1e-4, wd 1e-5, 1500 epochs, batch 32, curriculum when folded",)),
    "noscope": Recipe(name="noscope", optimizer="rmsprop", lr=NOSCOPE_RMSPROP_LR, weight_decay=0.0,
                      epochs=NOSCOPE_EPOCHS, notes=("original: RMSprop lr 0.001/1.5 as in NoScope, 50 epochs",)),
    "cifar10": Recipe(name="cifar10", epochs=CIFAR_EPOCHS, lr_schedule="step", val_split=CIFAR_VAL_IMAGES,
                      augment="crop_flip",
                      notes=("StepLR(200, 0.5) also for folded CIFAR-10 (the original lost it by a bug)",)),
    "cifar100": Recipe(name="cifar100", epochs=CIFAR_EPOCHS, lr_schedule="step", val_split=CIFAR_VAL_IMAGES,
                       augment="crop_flip", notes=("original: StepLR(200, 0.5) stepped every epoch",)),
    "quick": Recipe(name="quick", lr=QUICK_LR, epochs=QUICK_EPOCHS, batch_size=QUICK_BATCH_SIZE,
                    lr_schedule="cosine", slot_warmup=QUICK_SLOT_WARMUP,
                    notes=("short CPU runs on small (synthetic) data; not from the original",)),
}

# Per-(task, fold) exceptions of the original, applied on top of the group recipe.
TASK_OVERRIDES: dict[tuple[str, int], dict[str, Any]] = {
    ("lol/timer-minutes", 4): {"epochs": 2 * GAME_EPOCHS, "curriculum_divisor": 2 * CURRICULUM_DIVISOR,
                               "curriculum_gap": 2 * CURRICULUM_GAP},
}

FAMILY_RECIPES = {"game": "game", "noscope": "noscope", "resnet": "cifar100"}
# What the recommended recipe takes over from the original's per family and task (augmentation, split).
RECOMMENDED_FAMILY = {"resnet": {"augment": "crop_flip"}}
RECOMMENDED_TASK = {"cifar10": {"val_split": CIFAR_VAL_IMAGES}, "cifar100": {"val_split": CIFAR_VAL_IMAGES}}


def recipe_options() -> tuple[dataclasses.Field, ...]:
    """The :class:`Recipe` fields that are training options (``train``/``sweep`` flags and overrides)."""
    return tuple(f for f in dataclasses.fields(Recipe) if "help" in f.metadata)


def list_recipes() -> list[str]:
    """Recipe names for ``--recipe``: the recipes, and ``original`` (the original's recipe of the task)."""
    return sorted([*RECIPES, ORIGINAL])


def validate_recipe(recipe: Recipe) -> Recipe:
    """Check every field's range; errors name the field and the allowed values."""
    if recipe.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {recipe.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if recipe.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"unknown lr schedule {recipe.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if recipe.augment not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {recipe.augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if not recipe.lr > 0:
        raise ConfigError(f"learning rate must be > 0, got {recipe.lr}; pass e.g. --lr 1e-3")
    if recipe.weight_decay < 0 or recipe.momentum < 0:
        raise ConfigError("weight decay and momentum must be >= 0")
    for key in ("epochs", "batch_size", "lr_step_size", "curriculum_gap", "curriculum_divisor"):
        value = getattr(recipe, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key.replace('_', ' ')} must be an integer >= 1, got {value!r}")
    if isinstance(recipe.slot_warmup, bool) or not isinstance(recipe.slot_warmup, int) or recipe.slot_warmup < 0:
        raise ConfigError(f"slot warm-up must be an integer >= 0 (epochs), got {recipe.slot_warmup!r}")
    if not 0.0 <= recipe.slot_warmup_fraction <= MAX_SLOT_WARMUP_FRACTION:
        raise ConfigError(f"slot warm-up fraction must be in [0, {MAX_SLOT_WARMUP_FRACTION}] (of the epochs), "
                          f"got {recipe.slot_warmup_fraction!r}")
    split = recipe.val_split
    if isinstance(split, float) and not 0.0 < split < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {split}")
    if isinstance(split, int) and split < 1:
        raise ConfigError(f"validation split must be >= 1 image, got {split}")
    return recipe


def recipe_for(spec: TaskSpec, fold: int, name: str | None = None) -> Recipe:
    """The recipe of a task at a fold: ``name`` (default ``recommended``), or with ``original`` the
    original's recipe by task name, else by family.

    ``recommended`` takes the original's augmentation and validation split for ResNet/CIFAR tasks;
    ``original`` adds the per-task exceptions of the original (:data:`TASK_OVERRIDES`). A
    description's own ``"recipe": {...}`` object is applied on top.
    """
    name = DEFAULT_RECIPE if name is None else name
    if name == ORIGINAL:
        if spec.name in RECIPES:
            key = spec.name
        elif spec.family in FAMILY_RECIPES:
            key = FAMILY_RECIPES[spec.family]
        else:
            raise ConfigError(f"the original has no recipe for family {spec.family!r}; pass --recipe "
                              f"({', '.join(sorted(RECIPES))})")
        recipe = apply_overrides(RECIPES[key], TASK_OVERRIDES.get((spec.name, fold), {}))
    elif name in RECIPES:
        recipe = RECIPES[name]
        if name == DEFAULT_RECIPE:
            recipe = apply_overrides(recipe, {**RECOMMENDED_FAMILY.get(spec.family, {}),
                                              **RECOMMENDED_TASK.get(spec.name, {})})
    else:
        raise ConfigError(f"unknown recipe {name!r}{did_you_mean(name, list_recipes())}; choose one of "
                          f"{', '.join(list_recipes())}")
    own = spec.extra.get("recipe")
    if own is not None:
        where = spec.source or spec.name
        if not isinstance(own, Mapping):
            raise ConfigError(f"{where}: the description's 'recipe' must be a JSON object of recipe fields")
        recipe = apply_overrides(recipe, own, where=f"{where}: 'recipe'")
    return recipe



def scaled_slot_warmup(epochs: int, fraction: float, fold: int) -> int:
    """Slot warm-up epochs of a run: ``round(fraction * epochs)``, at least 1, for a folded model; else 0."""
    if fold <= 1 or fraction <= 0:
        return 0
    return max(1, int(fraction * epochs + 0.5))


def fit_to_epochs(recipe: Recipe, fold: int) -> Recipe:
    """The recipe with its slot warm-up set from ``slot_warmup_fraction`` and the epochs (if the fraction is set)."""
    if recipe.slot_warmup_fraction <= 0:
        return recipe
    return dataclasses.replace(recipe, slot_warmup=scaled_slot_warmup(recipe.epochs, recipe.slot_warmup_fraction,
                                                                      fold))


_FIELD_TYPES = {"optimizer": str, "lr_schedule": str, "augment": str, "curriculum": bool,
                "lr": float, "weight_decay": float, "momentum": float, "lr_gamma": float,
                "slot_warmup_fraction": float, "val_split": (int, float)}


def _check_type(key: str, value: Any, where: str) -> None:
    kind = _FIELD_TYPES.get(key, int)
    if kind is float or kind == (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        label = {str: "a string", bool: "true or false", int: "an integer"}.get(kind, "a number")
        raise ConfigError(f"{where}recipe field '{key}' must be {label}, got {value!r}")


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any], where: str = "") -> Recipe:
    """Replace fields whose override is not None; an unknown field or a value of the wrong type is a
    ConfigError (``where`` prefixes the message). An explicit ``slot_warmup`` switches off
    ``slot_warmup_fraction``."""
    known = sorted({f.name for f in dataclasses.fields(Recipe)} - {"name", "notes"})
    prefix = f"{where}: " if where else ""
    for key in overrides:
        if key not in known:
            raise ConfigError(f"{prefix}unknown recipe field '{key}'{did_you_mean(key, known)}; "
                              f"known: {', '.join(known)}")
    values = {k: v for k, v in overrides.items() if v is not None}
    for key, value in values.items():
        _check_type(key, value, prefix)
    if "slot_warmup" in values and "slot_warmup_fraction" not in values:
        values["slot_warmup_fraction"] = 0.0
    return validate_recipe(dataclasses.replace(recipe, **values)) if values else recipe

