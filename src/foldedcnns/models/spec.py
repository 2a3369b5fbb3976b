"""Task descriptions: everything about a task that is data, not code.

A task is described by a JSON file (the shipped ones live in ``models/descriptions/``). The
format extends the original release's ``model_description.json``::

    {
      "name": "lol/goldnumber-fraction",
      "family": "game",                 # which builder: game | noscope | resnet
      "out-h": 22, "out-w": 52,         # input height and width of one image
      "chan-in": 3,                     # channels of one image
      "ClassNames": ["0", ..., "other"],
      "mean": [...], "std": [...],      # optional normalisation (default: none, inputs in [0, 1])
      "model-architecture": {...}       # family-specific numbers
    }

``family`` defaults to ``"game"`` so a description written for the original code loads as is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foldedcnns.errors import ConfigError

DESCRIPTION_DIR = Path(__file__).with_name("descriptions")


@dataclass(frozen=True)
class TaskSpec:
    """One classification task: input size, classes, normalisation and architecture numbers."""

    name: str
    family: str
    in_channels: int
    height: int
    width: int
    class_names: tuple[str, ...]
    architecture: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one unfolded image."""
        return (self.in_channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        """The description as JSON-ready data (round-trips through :func:`spec_from_dict`)."""
        out: dict[str, Any] = {
            "name": self.name,
            "family": self.family,
            "out-h": self.height,
            "out-w": self.width,
            "chan-in": self.in_channels,
            "ClassNames": list(self.class_names),
            "model-architecture": dict(self.architecture),
        }
        if self.mean is not None:
            out["mean"] = list(self.mean)
            out["std"] = list(self.std or ())
        out.update(self.extra)
        return out


_KNOWN_KEYS = {"name", "family", "out-h", "out-w", "chan-in", "ClassNames", "class-names", "num-classes",
               "num_classes", "mean", "std", "model-architecture"}


def _positive_int(desc: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = desc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def spec_from_dict(desc: Mapping[str, Any], source: str | None = None, name: str | None = None) -> TaskSpec:
    """Validate a description mapping and turn it into a :class:`TaskSpec`."""
    where = source or "model description"
    if not isinstance(desc, Mapping):
        raise ConfigError(f"{where}: a model description must be a JSON object")
    class_names = desc.get("ClassNames", desc.get("class-names"))
    if class_names is None:
        count = desc.get("num-classes", desc.get("num_classes"))
        if isinstance(count, int) and count >= 2:
            class_names = [str(i) for i in range(count)]
    if not isinstance(class_names, list) or len(class_names) < 2:
        raise ConfigError(f"{where}: 'ClassNames' must list at least 2 class names")
    class_names = [str(c) for c in class_names]
    if len(set(class_names)) != len(class_names):
        raise ConfigError(f"{where}: 'ClassNames' has duplicates; every class needs a unique name")
    arch = desc.get("model-architecture", {})
    if not isinstance(arch, Mapping):
        raise ConfigError(f"{where}: 'model-architecture' must be a JSON object")
    mean, std = desc.get("mean"), desc.get("std")
    channels = _positive_int(desc, "chan-in", where, default=3)
    if (mean is None) != (std is None):
        raise ConfigError(f"{where}: give both 'mean' and 'std' or neither")
    if mean is not None and (len(mean) != channels or len(std) != channels or any(s <= 0 for s in std)):
        raise ConfigError(f"{where}: 'mean' and 'std' need {channels} values each, std > 0")
    task_name = name or desc.get("name") or (Path(source).stem if source else None)
    if not task_name:
        raise ConfigError(f"{where}: the description needs a 'name'")
    return TaskSpec(
        name=str(task_name),
        family=str(desc.get("family", "game")),
        in_channels=channels,
        height=_positive_int(desc, "out-h", where),
        width=_positive_int(desc, "out-w", where),
        class_names=tuple(class_names),
        architecture=dict(arch),
        mean=None if mean is None else tuple(float(v) for v in mean),
        std=None if std is None else tuple(float(v) for v in std),
        extra={k: v for k, v in desc.items() if k not in _KNOWN_KEYS},
        source=source,
    )


def load_description(path: str | Path) -> TaskSpec:
    """Read a task description JSON file; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"description file {path} does not exist; pass the path of a model description JSON")
    try:
        desc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from exc
    return spec_from_dict(desc, source=str(path))


def shipped_descriptions() -> dict[str, TaskSpec]:
    """All descriptions shipped as package data, keyed by task name."""
    specs = {}
    for path in sorted(DESCRIPTION_DIR.rglob("*.json")):
        spec = load_description(path)
        specs[spec.name] = spec
    return specs


def scaled(base: int, multiplier: float) -> int:
    """Channel count of a widened layer: ``int(base * multiplier)`` (truncated), as in the original."""
    return max(1, int(base * multiplier))


def default_multiplier(fold: int) -> float:
    """Hidden-width multiplier for fold f: sqrt(f), which keeps FLOPs per image about constant."""
    return math.sqrt(fold)
