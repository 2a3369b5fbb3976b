"""Training recipes: the original's optimiser, schedule and epochs per data-set group, as data.

A :class:`Recipe` is looked up once per run with :func:`recipe_for` (task family and name, fold)
and then overridden field by field from the command line (:func:`apply_overrides`). The values are
those of the original release (reference section 4.2, hard-coded numbers in section 8):

============  =========================  ========  ============  =======  ============================
group         optimiser                  epochs    LR schedule   batch    extras
============  =========================  ========  ============  =======  ============================
game          Adam 1e-4, wd 1e-5         1500      none          32       curriculum when folded
noscope       RMSprop 0.001/1.5          50        none          32
cifar10       Adam 1e-4, wd 1e-5         1500      StepLR 200/.5 32       crop 4 + flip, 5000 val
cifar100      Adam 1e-4, wd 1e-5         1500      StepLR 200/.5 32       crop 4 + flip, 5000 val
quick         Adam 1e-3, wd 1e-5         30        cosine        128      slot warm-up 10 when folded
============  =========================  ========  ============  =======  ============================

lol/timer-minutes at fold 4 runs 3000 epochs with the slower curriculum (start and step N//20,
a class step every 120 epochs), as in the original (:data:`TASK_OVERRIDES`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.models.spec import TaskSpec

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


@dataclass(frozen=True)
class Recipe:
    """How to train one data-set group. Units: learning rates per step, gaps and epochs in epochs.

    ``val_split`` is used only when the data has no validation split of its own: an int is a number of
    images, a float a fraction of the training images (drawn with a fixed seed, so every run and
    ``evaluate`` see the same split). ``curriculum`` switches curriculum learning on for folded models
    (fold > 1) only, as the original did; ``curriculum_divisor`` sets the start and step size
    (``N // divisor`` classes) and ``curriculum_gap`` the epochs between steps. ``slot_warmup`` is the
    number of epochs a folded model trains as f separate per-image CNNs first
    (:mod:`foldedcnns.training.slots`; 0 = off, as in the original).
    """

    name: str
    optimizer: str = "adam"
    lr: float = ORIGINAL_ADAM_LR
    weight_decay: float = ORIGINAL_WEIGHT_DECAY
    momentum: float = 0.0
    epochs: int = GAME_EPOCHS
    batch_size: int = ORIGINAL_BATCH_SIZE
    lr_schedule: str = "none"
    lr_step_size: int = CIFAR_STEP_SIZE
    lr_gamma: float = CIFAR_STEP_GAMMA
    val_split: float | int = VAL_FRACTION
    augment: str = "none"
    crop_padding: int = CIFAR_CROP_PADDING
    curriculum: bool = False
    curriculum_gap: int = CURRICULUM_GAP
    curriculum_divisor: int = CURRICULUM_DIVISOR
    slot_warmup: int = 0
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


def list_recipes() -> list[str]:
    return sorted(RECIPES)


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
    split = recipe.val_split
    if isinstance(split, float) and not 0.0 < split < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {split}")
    if isinstance(split, int) and split < 1:
        raise ConfigError(f"validation split must be >= 1 image, got {split}")
    return recipe


def recipe_for(spec: TaskSpec, fold: int, name: str | None = None) -> Recipe:
    """The recipe of a task at a fold: an explicit ``name``, else by task name, else by family.

    Per-task exceptions of the original (:data:`TASK_OVERRIDES`) and a description's own
    ``"recipe": {...}`` object are applied on top, in that order.
    """
    if name is not None:
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())}")
        key = name
    elif spec.name in RECIPES:
        key = spec.name
    elif spec.family in FAMILY_RECIPES:
        key = FAMILY_RECIPES[spec.family]
    else:
        raise ConfigError(f"no training recipe for family {spec.family!r}; pass --recipe "
                          f"({', '.join(list_recipes())})")
    recipe = RECIPES[key]
    if name is None:
        recipe = apply_overrides(recipe, TASK_OVERRIDES.get((spec.name, fold), {}))
    own = spec.extra.get("recipe")
    if own is not None:
        if not isinstance(own, Mapping):
            raise ConfigError(f"{spec.name}: the description's 'recipe' must be a JSON object of recipe fields")
        recipe = apply_overrides(recipe, own)
    return recipe


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """Replace fields whose override is not None; unknown fields are a ConfigError."""
    known = {f.name for f in dataclasses.fields(Recipe)} - {"name", "notes"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {k: v for k, v in overrides.items() if v is not None}
    return validate_recipe(dataclasses.replace(recipe, **values)) if values else recipe

