"""The model registry: every task, at any fold, from one factory.

``build_model(task, fold=f)`` builds the original CNN (f = 1) or its FoldedCNN (f > 1) for a task
name (``list_models()``), a user's description JSON path, or a :class:`TaskSpec`. Compound-scaled
baselines are named ``compound/<game task>``. Families map a description's ``family`` field to a
builder; new families register with :func:`register_family`, new tasks with :func:`register_task`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foldedcnns.errors import ConfigError
from foldedcnns.models import game, noscope, resnet
from foldedcnns.models.compound import DEFAULT_PHI, compound_game_cnn, compound_input_hw
from foldedcnns.models.layers import init_weights
from foldedcnns.models.spec import (
    TaskSpec,
    default_multiplier,
    load_description,
    shipped_descriptions,
    spec_from_dict,
)
from foldedcnns.models.validate import ArchitectureCheck, check_param_count, known_families, register_check
from foldedcnns.utils.text import did_you_mean

FamilyBuilder = Callable[..., nn.Module]
COMPOUND_PREFIX = "compound/"

_FAMILIES: dict[str, FamilyBuilder] = {}
_TASKS: dict[str, TaskSpec] = {}


def register_family(name: str, check: ArchitectureCheck | None = None) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Decorator: register ``builder(spec, *, fold, multiplier) -> nn.Module`` for a family name.

    ``check(architecture, height, width, where) -> dict`` validates a description's
    ``model-architecture`` when it is loaded (:mod:`foldedcnns.models.validate`); without one the
    architecture object is passed to the builder unchecked.
    """

    def wrap(builder: FamilyBuilder) -> FamilyBuilder:
        if name in _FAMILIES:
            raise ValueError(f"model family {name!r} is already registered")
        _FAMILIES[name] = builder
        register_check(name, check)
        return builder

    return wrap


register_family("game", game.check_architecture)(game.game_cnn)
register_family("noscope", noscope.check_architecture)(noscope.noscope_cnn)
register_family("resnet", resnet.check_architecture)(resnet.cifar_resnet)


def _tasks() -> dict[str, TaskSpec]:
    if not _TASKS:
        _TASKS.update(shipped_descriptions())
    return _TASKS


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Make a user-defined task buildable by name."""
    if spec.family not in _FAMILIES:
        raise ConfigError(f"task {spec.name}: unknown family {spec.family!r}; known: {', '.join(sorted(_FAMILIES))}")
    if spec.name in _tasks() and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered")
    _tasks()[spec.name] = spec
    return spec


def list_models(pattern: str = "*", *, compound: bool = True) -> list[str]:
    """Task names matching an fnmatch ``pattern``, sorted; compound baselines included by default."""
    names = list(_tasks())
    if compound:
        names += [COMPOUND_PREFIX + n for n, s in _tasks().items() if s.family == "game"]
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_families() -> list[str]:
    return known_families()


def get_task(task: str | Path | TaskSpec) -> TaskSpec:
    """Resolve a task name, a description file path or a spec to a :class:`TaskSpec`."""
    if isinstance(task, TaskSpec):
        return task
    name = str(task)
    if name.startswith(COMPOUND_PREFIX):
        name = name[len(COMPOUND_PREFIX):]
    if name in _tasks():
        return _tasks()[name]
    if name.endswith(".json") or Path(name).is_file():
        return load_description(name)
    raise ConfigError(
        f"unknown task {name!r}{did_you_mean(name, _tasks())}; run 'foldedcnns models' to list tasks "
        "or pass --description FILE"
    )


@dataclass(frozen=True)
class ModelConfig:
    """What a built model is: enough to rebuild it and to feed it."""

    task: TaskSpec
    fold: int
    multiplier: float
    compound_phi: int | None = None

    @property
    def mode(self) -> str:
        """``Original``, ``Folded`` or ``Compound`` (the benchmark's Mode column)."""
        if self.compound_phi is not None:
            return "Compound"
        return "Folded" if self.fold > 1 else "Original"

    @property
    def name(self) -> str:
        return COMPOUND_PREFIX + self.task.name if self.compound_phi is not None else self.task.name

    @property
    def image_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as this model reads it (compound models read a smaller image)."""
        if self.compound_phi is not None:
            return (self.task.in_channels, *compound_input_hw(self.task, self.compound_phi))
        return self.task.input_size

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C*f, H, W) of one folded model input."""
        c, h, w = self.image_size
        return (c * self.fold, h, w)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: the full task description travels with the model."""
        return {"task": self.task.to_dict(), "fold": self.fold, "multiplier": self.multiplier,
                "compound_phi": self.compound_phi}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(spec_from_dict(data["task"]), int(data["fold"]), float(data["multiplier"]),
                   data.get("compound_phi"))


def check_fold(fold: int) -> int:
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 1:
        raise ConfigError(f"fold must be an integer >= 1, got {fold!r}")
    return fold


def build_model(task: str | Path | TaskSpec, *, fold: int = 1, multiplier: float | None = None,
                init: bool = True, phi: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the CNN of ``task`` folded ``fold`` times.

    ``multiplier`` (hidden-width factor) defaults to sqrt(fold); channel counts are
    ``int(base * multiplier)``. A ``compound/<task>`` name builds the compound-scaled baseline
    (``phi`` defaults to 2; fold must be 1). ``init`` applies the original's initialisation.
    The returned module carries a :class:`ModelConfig` as ``model.config``.
    Input ``(G, C*fold, H, W)``, output ``(G, K*fold)``.
    """
    check_fold(fold)
    spec = get_task(task)
    is_compound = isinstance(task, str) and task.startswith(COMPOUND_PREFIX)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if is_compound or phi is not None:
        if fold != 1 or multiplier not in (None, 1, 1.0):
            raise ConfigError("compound-scaled models are not folded; use fold 1 with compound/<task>")
        phi = DEFAULT_PHI if phi is None else phi
        model = compound_game_cnn(spec, phi=phi, **kwargs)
        config = ModelConfig(spec, 1, 1.0, compound_phi=phi)
    else:
        if spec.family not in _FAMILIES:
            raise ConfigError(f"task {spec.name}: unknown family {spec.family!r}; known: {', '.join(list_families())}")
        mult = default_multiplier(fold) if multiplier is None else float(multiplier)
        if not mult > 0 or mult == float("inf"):
            raise ConfigError(f"multiplier must be a finite number > 0, got {multiplier!r}")
        builder = _FAMILIES[spec.family]
        model = _checked_build(builder, spec, fold, mult, kwargs)
        config = ModelConfig(spec, fold, mult)
    if init:
        init_weights(model)
    model.config = config
    return model


def _checked_build(builder: FamilyBuilder, spec: TaskSpec, fold: int, mult: float,
                   kwargs: dict[str, Any]) -> nn.Module:
    """Build on the meta device first (nothing allocated) and refuse a model over the parameter limit."""
    with torch.device("meta"):
        shape_only = builder(spec, fold=fold, multiplier=mult, **kwargs)
    params = sum(p.numel() for p in shape_only.parameters())
    check_param_count(params, spec.source or spec.name, f"the model at fold {fold} (multiplier {mult:g})")
    if torch.empty(()).device.type == "meta":  # already building on the meta device (shape_model)
        return shape_only
    return builder(spec, fold=fold, multiplier=mult, **kwargs)


def build_from_config(config: ModelConfig, *, init: bool = False) -> nn.Module:
    """Rebuild the model described by a :class:`ModelConfig` (e.g. from a checkpoint)."""
    if config.compound_phi is not None:
        return build_model(config.task, phi=config.compound_phi, init=init)
    return build_model(config.task, fold=config.fold, multiplier=config.multiplier, init=init)
