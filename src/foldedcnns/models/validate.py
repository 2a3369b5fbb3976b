"""Strict checks of task descriptions: every key known, every number of the right type and in range.

Used by :func:`foldedcnns.models.spec.spec_from_dict` (top-level keys) and by each family's
``check_architecture`` (the ``model-architecture`` object). Every error is one line that names the
file (``where``) and the key by its path (``model-architecture.params.n-conv-units``); an unknown key
also lists the known keys at that level and the closest match. Upper bounds on every size
(:data:`LIMITS`) make an absurd description fail before anything is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.utils.text import did_you_mean

MAX_SIDE = 2048  # out-h, out-w: these CNNs classify small crops and frames
MAX_IN_CHANNELS = 64  # chan-in
MAX_CLASSES = 10_000  # classes of one output layer (ImageNet has 1,000)
MAX_NAME_CHARS = 200  # task and class names
MAX_WIDTH = 4096  # feature maps / filters of one layer
MAX_DENSE = 65_536  # units of a hidden dense layer
MAX_UNITS = 32  # game conv units
MAX_POOL_STRIDE = 16  # game pool1_stride (read and ignored, as in the original)
MAX_NOSCOPE_LAYERS = 16  # NoScope nb_layers
MAX_BLOCKS = 64  # ResNet blocks per stage
MAX_PARAMS = 1_000_000_000  # parameters of one built model (4 GB in fp32)
MAX_FILE_BYTES = 4 * 1024 * 1024  # a description file

LIMITS = {"side": MAX_SIDE, "in_channels": MAX_IN_CHANNELS, "classes": MAX_CLASSES, "width": MAX_WIDTH,
          "dense": MAX_DENSE, "units": MAX_UNITS, "noscope_layers": MAX_NOSCOPE_LAYERS, "blocks": MAX_BLOCKS,
          "params": MAX_PARAMS, "file_bytes": MAX_FILE_BYTES}

# (architecture mapping, height, width, where) -> the normalised architecture mapping
ArchitectureCheck = Callable[[Mapping[str, Any], int, int, str], dict[str, Any]]
_CHECKS: dict[str, ArchitectureCheck | None] = {}


def key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key



def check_keys(obj: Mapping[str, Any], known: Iterable[str], where: str, path: str = "") -> None:
    """Every key of ``obj`` must be in ``known``; the error names the key, a did-you-mean and the known keys."""
    known = sorted(known)
    for key in obj:
        if key not in known:
            level = f" of '{path}'" if path else ""
            raise ConfigError(f"{where}: unknown key '{key_path(path, key)}'{did_you_mean(key, known)}; "
                              f"known keys{level}: {', '.join(known)}")


def check_mapping(value: Any, where: str, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: '{path}' must be a JSON object, got {type_name(value)}")
    return value


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def check_int(value: Any, where: str, path: str, low: int, high: int) -> int:
    """An integer (not a bool, not 32.0) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: '{path}' must be an integer from {low} to {high:,}, got {value!r} "
                          f"({type_name(value)})")
    if not low <= value <= high:
        raise ConfigError(f"{where}: '{path}' must be an integer from {low} to {high:,}, got {value:,}")
    return value


def get_int(obj: Mapping[str, Any], key: str, where: str, path: str, low: int, high: int,
            default: int | None = None) -> int:
    """``obj[key]`` checked by :func:`check_int`; ``default`` when absent (None: the key is required)."""
    if key not in obj:
        if default is None:
            raise ConfigError(f"{where}: '{key_path(path, key)}' is missing; give an integer from {low} to {high:,}")
        return default
    return check_int(obj[key], where, key_path(path, key), low, high)


def check_number(value: Any, where: str, path: str, *, positive: bool = False) -> float:
    """A finite JSON number (int or float, not a bool); ``positive``: > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: '{path}' must be a finite number, got {value!r}")
    if positive and not value > 0:
        raise ConfigError(f"{where}: '{path}' must be > 0, got {value!r}")
    return float(value)


def check_string(value: Any, where: str, path: str, max_chars: int = MAX_NAME_CHARS) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{path}' must be a non-empty string, got {value!r}")
    if len(value) > max_chars:
        raise ConfigError(f"{where}: '{path}' has {len(value):,} characters; at most {max_chars} are allowed")
    return value


def check_choice(value: Any, choices: Iterable[str], where: str, path: str) -> str:
    choices = sorted(choices)
    if not isinstance(value, str) or value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ConfigError(f"{where}: '{path}' must be one of {', '.join(choices)}, got {value!r}{hint}")
    return value


def check_int_list(value: Any, length: int, where: str, path: str, low: int, high: int) -> list[int]:
    if not isinstance(value, list) or len(value) != length:
        raise ConfigError(f"{where}: '{path}' must be a list of {length} integers, got {value!r}")
    return [check_int(v, where, f"{path}[{i}]", low, high) for i, v in enumerate(value)]


# -- families ------------------------------------------------------------------------------------------


def register_check(family: str, check: ArchitectureCheck | None) -> None:
    """Register the architecture check of a model family (None: the architecture is passed through)."""
    _CHECKS[family] = check


def known_families() -> list[str]:
    return sorted(_CHECKS)


def check_family(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in _CHECKS:
        hint = did_you_mean(value, _CHECKS) if isinstance(value, str) else ""
        raise ConfigError(f"{where}: unknown family {value!r}{hint}; known families: {', '.join(known_families())}")
    return value


def check_architecture(family: str, arch: Any, height: int, width: int, where: str) -> dict[str, Any]:
    """The normalised ``model-architecture`` of a description of ``family`` (checked by the family)."""
    arch = check_mapping(arch, where, "model-architecture")
    check = _CHECKS.get(check_family(family, where))
    return dict(arch) if check is None else check(arch, height, width, where)


def check_param_count(params: int, where: str, what: str) -> None:
    """A model of more than :data:`MAX_PARAMS` parameters is refused (counted on the meta device)."""
    if params > MAX_PARAMS:
        raise ConfigError(f"{where}: {what} would have {params:,} parameters, more than the limit of "
                          f"{MAX_PARAMS:,}; use smaller widths in 'model-architecture', fewer classes or a "
                          "smaller fold or multiplier")
