"""Task layouts: what the crops of each game task show, as data in a registry.

A :class:`Layout` describes one task's HUD element: the text a class's crop reads (made from the
class name), the icon beside it, its alignment and height, and the wrong-format readings its
``other`` class shows. Built-in tasks are registered below with :func:`register_layout`; any other
game task (a user's description) falls back to :func:`generic_layout`, whose crops show the class
name itself. :func:`layout_for` picks the one for a task.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from foldedcnns.data.synth.scene import Scene, SceneFn, pick
from foldedcnns.errors import ConfigError
from foldedcnns.models import get_task
from foldedcnns.models.spec import TaskSpec

OTHER = "other"  # the class of crops that show no valid reading
HUD_WORDS = ("KDA", "LVL", "HP", "XP", "MVP", "AFK", "GG", "OK", "CS", "x2", "x3", "REV", "AMMO", "MAP", "VS",
             "WIN", "LOOT", "ZONE", "GOLD", "TIME", "SHOP")
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"

WrongFormat = str | Callable[[np.random.Generator], str]
"""A reading the ``other`` class shows: a fixed string, or ``fmt(rng) -> str``."""


def _digits(rng: np.random.Generator, low: int, high: int) -> str:
    return str(int(rng.integers(low, high + 1)))


def _number(low: int, high: int) -> Callable[[np.random.Generator], str]:
    """A wrong format: an integer in ``[low, high]``."""
    return lambda rng: _digits(rng, low, high)


def _hud_word(rng: np.random.Generator) -> str:
    if rng.random() < 0.7:
        return pick(rng, HUD_WORDS)
    return "".join(pick(rng, LETTERS) for _ in range(int(rng.integers(2, 5))))


def other_scene(rng: np.random.Generator, wrong_formats: Sequence[WrongFormat], icon: str | None = None) -> Scene:
    """A crop with no valid reading: clutter only, a HUD word, or a value in a wrong format."""
    kind = rng.random()
    if kind < 0.3:
        return Scene("", icon=icon if rng.random() < 0.5 else None)
    if kind < 0.6 or not wrong_formats:
        return Scene(_hud_word(rng), align=pick(rng, ("left", "center", "right")))
    fmt = wrong_formats[int(rng.integers(len(wrong_formats)))]
    text = fmt if isinstance(fmt, str) else fmt(rng)
    return Scene(text, icon=icon if rng.random() < 0.5 else None, align="right")


@dataclass(frozen=True)
class Layout:
    """One task's HUD element, as data; calling it draws a random :class:`Scene` of a class.

    ``text(class_name, rng)`` is what a valid crop reads. The ``icon`` ("coin", "emblem" or None)
    shows in a valid crop with probability ``icon_prob`` (no random draw when 1) and in half of the
    ``other`` crops that show clutter or a wrong format.
    """

    text: Callable[[str, np.random.Generator], str]
    wrong_formats: tuple[WrongFormat, ...] = ()
    icon: str | None = None
    icon_prob: float = 1.0
    align: str = "center"  # "left", "center" or "right"
    height: tuple[float, float] = (0.55, 0.8)  # digit height as a fraction of the crop height

    def __call__(self, name: str, rng: np.random.Generator) -> Scene:
        if name == OTHER:
            return other_scene(rng, self.wrong_formats, self.icon)
        text = self.text(name, rng)
        icon = self.icon
        if icon is not None and self.icon_prob < 1 and rng.random() >= self.icon_prob:
            icon = None
        return Scene(text, icon=icon, align=self.align, height=self.height)


_LAYOUTS: dict[str, Layout] = {}
TASK_LAYOUTS: Mapping[str, Layout] = MappingProxyType(_LAYOUTS)
"""The registered layouts by task name (read-only; add with :func:`register_layout`)."""


def register_layout(task: str, layout: Layout) -> Layout:
    """Register the :class:`Layout` of a game task name; its crops are then drawn that way."""
    if task in _LAYOUTS:
        raise ValueError(f"synthetic layout for task {task!r} is already registered")
    _LAYOUTS[task] = layout
    return layout


def _gold_integer(rng: np.random.Generator) -> str:
    return _digits(rng, 0, 9) if rng.random() < 0.4 else _digits(rng, 10, 99)


_GOLD_WRONG = (_number(100, 999), _number(1000, 9999), "--", lambda r: f"{_digits(r, 1, 99)}k")

# a gold amount 12.[3]k: the digit after the decimal point
register_layout("lol/goldnumber-fraction", Layout(
    lambda name, r: f"{_gold_integer(r)}.{name}k", wrong_formats=_GOLD_WRONG, align="right", height=(0.5, 0.75)))
# a gold amount [12].3k: the text before the decimal point
register_layout("lol/goldnumber-int", Layout(
    lambda name, r: f"{name}.{_digits(r, 0, 9)}k", wrong_formats=_GOLD_WRONG, align="right", height=(0.5, 0.75)))
# a game clock [07]:42: the minutes
register_layout("lol/timer-minutes", Layout(
    lambda name, r: f"{name}:{int(r.integers(0, 60)):02d}",
    wrong_formats=("--:--", lambda r: f"{_digits(r, 0, 9)}:{_digits(r, 0, 5)}", "PAUSE"), height=(0.6, 0.8)))
# squads left [14] next to a small emblem
register_layout("apex/squad_count_v2", Layout(
    lambda name, r: name, wrong_formats=("--", "?"), icon="emblem", icon_prob=0.7, align="right",
    height=(0.55, 0.75)))
# a coin count [9] next to a coin
register_layout("sot/coin_count-digits_3_4-v2", Layout(
    lambda name, r: name, wrong_formats=("--", "x"), icon="coin", align="right", height=(0.55, 0.8)))
# a countdown [12]m
register_layout("sot/timer3", Layout(
    lambda name, r: f"{name}m" if r.random() < 0.6 else name, wrong_formats=("--m", "m"), height=(0.55, 0.8)))


def generic_layout(class_names: Sequence[str]) -> SceneFn:
    """Fallback for a user's game task: the crop shows the class name.

    A class named ``other`` (any case) shows nothing or a HUD word that is not a class name.
    """
    words = [w for w in HUD_WORDS if w not in class_names]

    def layout(name: str, rng: np.random.Generator) -> Scene:
        if name.lower() == OTHER:
            return Scene("" if rng.random() < 0.3 else pick(rng, words))
        return Scene(name)

    return layout


def layout_for(spec: TaskSpec) -> SceneFn:
    """The scene generator of a task: its registered HUD layout, or the class-name fallback."""
    layout = _LAYOUTS.get(spec.name)
    return layout if layout is not None else generic_layout(spec.class_names)


def game_spec(task: str | os.PathLike[str] | TaskSpec) -> TaskSpec:
    """Resolve ``task`` and check that synthetic crops can be drawn for it (an RGB game task whose
    class names can be folder names); raise :class:`ConfigError` naming the problem otherwise."""
    spec = get_task(task if isinstance(task, TaskSpec) else str(task))
    if spec.family != "game":
        raise ConfigError(f"synthetic data is drawn for game tasks only; {spec.name} is a {spec.family} task "
                          "(use its real data: NoScope videos or CIFAR archives)")
    if spec.in_channels != 3:
        raise ConfigError(f"synthetic crops are RGB but task {spec.name} reads {spec.in_channels} channels")
    bad = [c for c in spec.class_names if "/" in c or "\\" in c or c in (".", "..") or not c.strip()]
    if bad:
        raise ConfigError(f"class names {bad[:3]} of {spec.name} cannot be folder names; rename them")
    return spec
