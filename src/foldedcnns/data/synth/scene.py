"""What one synthetic crop shows (:class:`Scene`), the hand-off from task layouts to the renderer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Scene:
    """What one crop shows: text (empty for clutter only), an optional icon, alignment, text height."""

    text: str
    icon: str | None = None  # "coin", "emblem" or None
    align: str = "center"  # "left", "center" or "right"
    height: tuple[float, float] = (0.55, 0.8)  # digit height as a fraction of the crop height


SceneFn = Callable[[str, np.random.Generator], Scene]
"""A task's layout: ``layout(class_name, rng) -> Scene``, one random scene of that class per call."""


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One item of a sequence (``Generator.choice`` is slow for single draws)."""
    return items[int(rng.integers(len(items)))]
