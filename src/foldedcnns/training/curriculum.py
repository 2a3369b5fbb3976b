"""Curriculum learning: classes are introduced over the epochs (reference section 4.5).

The original starts with ``max(N // 10, f)`` of the N classes and adds ``max(N // 10, 1)`` more
every 60 epochs (lol/timer-minutes at f = 4: ``N // 20`` every 120 epochs). Classes come in label
order, i.e. the order of the description's class names. The schedule is a pure function of the
epoch, so resuming needs nothing but the epoch number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.training.recipes import CURRICULUM_DIVISOR, CURRICULUM_GAP


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

