"""``Crop``: a rectangle of a frame in pixels, the one crop type (``--crop x,y,w,h``) of every command."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from foldedcnns.errors import ConfigError


class Crop(NamedTuple):
    """Left ``x``, top ``y``, width ``w``, height ``h`` in pixels. A tuple, so ``x, y, w, h = crop`` works."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str | Crop | tuple[int, int, int, int] | None) -> Crop | None:
        """``"x,y,w,h"`` (e.g. ``"100,40,52,22"``), a 4-tuple or ``None`` -> a checked ``Crop`` (or ``None``)."""
        if text is None:
            return None
        if isinstance(text, tuple):
            values = list(text)
        else:
            try:
                values = [int(p) for p in str(text).replace(" ", "").split(",")]
            except ValueError:
                values = []
        if (len(values) != 4 or not all(isinstance(v, int) for v in values)
                or values[0] < 0 or values[1] < 0 or values[2] < 1 or values[3] < 1):
            raise ConfigError(f"--crop must be x,y,w,h in pixels with x, y >= 0 and w, h >= 1 "
                              f"(e.g. 100,40,52,22), got {text!r}")
        return cls(*(int(v) for v in values))

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    def check_fits(self, width: int, height: int, where: str | Path = "the frame") -> None:
        """A crop outside a ``width`` x ``height`` frame is a one-line :class:`ConfigError` naming ``where``."""
        if self.x + self.w > width or self.y + self.h > height:
            raise ConfigError(f"crop {self.x},{self.y},{self.w},{self.h} does not fit in the {width}x{height} "
                              f"frames of {where}; pass --crop x,y,w,h inside the frame")

    def apply(self, frame: np.ndarray, where: str | Path = "the frame") -> np.ndarray:
        """Cut the rectangle out of ``frame`` ``(H, W, C) -> (h, w, C)``; it must lie inside the frame."""
        height, width = frame.shape[:2]
        self.check_fits(width, height, where)
        return frame[self.y:self.y + self.h, self.x:self.x + self.w]
