"""Task descriptions: everything about a task that is data, not code.

A task is described by a JSON file (the shipped ones live in ``models/descriptions/``). Two forms
load, and build the same model:

* the original release's ``model_description.json``, exactly as it ships: the game numbers nested
  under ``"params"``, no ``name`` (the file name is used) and no ``family`` (``game``)::

      {"out-h": 22, "out-w": 30,
       "model-architecture": {"template": "1_3s_1_convnet",
                              "params": {"n-conv-units": 2, "pool1_stride": 1, "conv1_n_feature_maps": 32,
                                         "convi_n_feature_maps": 32, "convn_n_feature_maps": 8}},
       "ClassNames": ["0", ..., "other"]}

* the flat form of the shipped files, which adds a few keys::

      {
        "name": "lol/goldnumber-fraction",
        "family": "game",                 # which builder: game | noscope | resnet
        "out-h": 22, "out-w": 52,         # input height and width of one image
        "chan-in": 3,                     # channels of one image (default 3)
        "ClassNames": ["0", ..., "other"],  # or "num-classes": K
        "mean": [...], "std": [...],      # optional normalisation (default: none, inputs in [0, 1])
        "model-architecture": {...},      # family-specific numbers, directly (or under "params")
        "noscope": {...}, "recipe": {...}  # optional: NoScope split settings, training recipe fields
      }

Validation is strict (:mod:`foldedcnns.models.validate`): an unknown key at any level, a number of
the wrong type or out of range, or sizes the pools cannot take is a one-line :class:`ConfigError`
that names the file and the key. :attr:`TaskSpec.architecture` holds the flat form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.models.validate import (
    MAX_CLASSES,
    MAX_FILE_BYTES,
    MAX_IN_CHANNELS,
    MAX_SIDE,
    check_architecture,
    check_family,
    check_int,
    check_keys,
    check_mapping,
    check_number,
    check_string,
    get_int,
)

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
        """The description as JSON-ready data in the flat form (round-trips through :func:`spec_from_dict`)."""
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


EXTRA_KEYS = ("noscope", "recipe")  # optional objects read by the data and training layers
_KNOWN_KEYS = ("name", "family", "out-h", "out-w", "chan-in", "ClassNames", "class-names", "num-classes",
               "num_classes", "mean", "std", "model-architecture", *EXTRA_KEYS)
NOSCOPE_KEYS = ("object", "fraction", "start_split")


def _one_of(desc: Mapping[str, Any], keys: tuple[str, str], where: str) -> str | None:
    given = [k for k in keys if k in desc]
    if len(given) > 1:
        raise ConfigError(f"{where}: '{given[0]}' and '{given[1]}' are the same setting; give only one")
    return given[0] if given else None


def _class_names(desc: Mapping[str, Any], where: str) -> list[str]:
    names_key = _one_of(desc, ("ClassNames", "class-names"), where)
    count_key = _one_of(desc, ("num-classes", "num_classes"), where)
    count = None if count_key is None else check_int(desc[count_key], where, count_key, 2, MAX_CLASSES)
    if names_key is None:
        if count is None:
            raise ConfigError(f"{where}: 'ClassNames' is missing; list the class names (at least 2) "
                              "or give 'num-classes'")
        return [str(i) for i in range(count)]
    names = desc[names_key]
    if not isinstance(names, list):
        raise ConfigError(f"{where}: '{names_key}' must be a list of class names, got {names!r}")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise ConfigError(f"{where}: '{names_key}' must list 2 to {MAX_CLASSES:,} class names, got {len(names):,}")
    for i, name in enumerate(names):
        check_string(name, where, f"{names_key}[{i}]")
    if len(set(names)) != len(names):
        dup = next(n for i, n in enumerate(names) if n in names[:i])
        raise ConfigError(f"{where}: '{names_key}' lists {dup!r} twice; every class needs a unique name")
    if count is not None and count != len(names):
        raise ConfigError(f"{where}: '{count_key}' is {count} but '{names_key}' lists {len(names)} names")
    return list(names)


def _normalisation(desc: Mapping[str, Any], channels: int, where: str) -> tuple[tuple[float, ...] | None, ...]:
    mean, std = desc.get("mean"), desc.get("std")
    if (mean is None) != (std is None):
        raise ConfigError(f"{where}: give both 'mean' and 'std' or neither")
    if mean is None:
        return None, None
    out = []
    for key, values in (("mean", mean), ("std", std)):
        if not isinstance(values, list) or len(values) != channels:
            raise ConfigError(f"{where}: '{key}' must be a list of {channels} numbers (one per channel), "
                              f"got {values!r}")
        out.append(tuple(check_number(v, where, f"{key}[{i}]", positive=key == "std") for i, v in enumerate(values)))
    return out[0], out[1]


def _extras(desc: Mapping[str, Any], where: str) -> dict[str, Any]:
    extra = {k: desc[k] for k in EXTRA_KEYS if k in desc}
    if "recipe" in extra:  # field names and values are checked by the training layer
        check_mapping(extra["recipe"], where, "recipe")
    if "noscope" in extra:
        entry = check_mapping(extra["noscope"], where, "noscope")
        check_keys(entry, NOSCOPE_KEYS, where, "noscope")
        if "object" in entry:
            check_string(entry["object"], where, "noscope.object")
        if "start_split" in entry:
            check_int(entry["start_split"], where, "noscope.start_split", 0, 1_000_000)
    return extra


def spec_from_dict(desc: Mapping[str, Any], source: str | None = None, name: str | None = None) -> TaskSpec:
    """Validate a description mapping (either form) and turn it into a :class:`TaskSpec`."""
    where = source or "model description"
    if not isinstance(desc, Mapping):
        raise ConfigError(f"{where}: a model description must be a JSON object, got {type(desc).__name__}")
    check_keys(desc, _KNOWN_KEYS, where)
    task_name = name or desc.get("name") or (Path(source).stem if source else None)
    if not task_name:
        raise ConfigError(f"{where}: the description needs a 'name'")
    check_string(task_name, where, "name")
    family = check_family(desc.get("family", "game"), where)
    height = get_int(desc, "out-h", where, "", 1, MAX_SIDE)
    width = get_int(desc, "out-w", where, "", 1, MAX_SIDE)
    channels = get_int(desc, "chan-in", where, "", 1, MAX_IN_CHANNELS, default=3)
    class_names = _class_names(desc, where)
    mean, std = _normalisation(desc, channels, where)
    arch = check_architecture(family, desc.get("model-architecture", {}), height, width, where)
    return TaskSpec(name=str(task_name), family=family, in_channels=channels, height=height, width=width,
                    class_names=tuple(class_names), architecture=arch, mean=mean, std=std,
                    extra=_extras(desc, where), source=source)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key '{key}' appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_description_file(path: str | Path) -> dict[str, Any]:
    """The JSON object of a description file; every problem is a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"description file {path} does not exist; pass the path of a model description JSON")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes is too large for a model description "
                              f"(limit {MAX_FILE_BYTES:,}); is this the right file?")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the description ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save the description as UTF-8 JSON") from exc
    try:
        desc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                          "fix the file") from exc
    except (ValueError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        raise ConfigError(f"{path}: not a valid description ({message}); fix the file") from exc
    if not isinstance(desc, dict):
        raise ConfigError(f"{path}: a model description must be a JSON object {{...}}, got {type(desc).__name__}")
    return desc


def load_description(path: str | Path) -> TaskSpec:
    """Read and validate a task description JSON file; errors name the file and the key."""
    return spec_from_dict(read_description_file(path), source=str(path))


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
