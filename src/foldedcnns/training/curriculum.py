"""Curriculum learning: classes are introduced over the epochs (reference section 4.5).

The original starts with ``max(N // 10, f)`` of the N classes and adds ``max(N // 10, 1)`` more
every 60 epochs (lol/timer-minutes at f = 4: ``N // 20`` every 120 epochs). Classes come in label
order, i.e. the order of the description's class names. The schedule is a pure function of the
epoch, so resuming needs nothing but the epoch number. A schedule that would not reach every class
within the run is compressed by :func:`fit_schedule`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.training.recipes import CURRICULUM_DIVISOR, CURRICULUM_GAP

# A fitted curriculum has every class in by this share of the run: the original's finish at 28-40 %
# of their 1,500 epochs (reference section 4.5).
FIT_FRACTION = 0.4


@dataclass(frozen=True)
class CurriculumSchedule:
    """``initial`` classes at epoch 0, ``step`` more every ``gap`` epochs, at most ``num_classes``."""

    num_classes: int
    initial: int
    step: int
    gap: int

    def __post_init__(self) -> None:
        for key in ("num_classes", "initial", "step", "gap"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"curriculum {key} must be an integer >= 1, got {value!r}")

    def classes_at(self, epoch: int) -> int:
        """Number of classes trained in (0-based) ``epoch``: the first ``classes_at(epoch)`` labels."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return min(self.num_classes, self.initial + (epoch // self.gap) * self.step)

    @property
    def complete_epoch(self) -> int:
        """First (0-based) epoch that trains on every class."""
        missing = max(0, self.num_classes - self.initial)
        return -(-missing // self.step) * self.gap

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def curriculum_schedule(num_classes: int, fold: int, *, divisor: int = CURRICULUM_DIVISOR,
                        gap: int = CURRICULUM_GAP) -> CurriculumSchedule:
    """The original's schedule: start ``max(N // divisor, f)``, add ``max(N // divisor, 1)`` every ``gap``."""
    if num_classes < 1 or fold < 1 or divisor < 1:
        raise ConfigError("curriculum needs num_classes, fold and divisor >= 1")
    size = num_classes // divisor
    return CurriculumSchedule(num_classes=num_classes, initial=min(num_classes, max(size, fold)),
                              step=max(size, 1), gap=gap)



def fit_schedule(schedule: CurriculumSchedule, epochs: int,
                 fraction: float = FIT_FRACTION) -> CurriculumSchedule | None:
    """``schedule`` compressed so that every class is in by ``fraction`` of ``epochs`` (same start).

    The gap shrinks first (``floor(fraction * epochs / steps)``, at least 1); if even a gap of 1 is too
    long, more classes come per step. A schedule that already fits is returned as is; None when no
    curriculum fits (a 1-epoch run), i.e. train on every class from the start.
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if schedule.complete_epoch < epochs:
        return schedule
    missing = schedule.num_classes - schedule.initial
    budget = max(1, int(fraction * epochs))  # epochs until the last class step
    steps = -(-missing // schedule.step)
    if budget >= steps:
        fitted = dataclasses.replace(schedule, gap=budget // steps)
    else:
        fitted = dataclasses.replace(schedule, gap=1, step=-(-missing // budget))
    return fitted if fitted.complete_epoch < epochs else None
