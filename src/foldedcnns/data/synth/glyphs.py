"""Typefaces and cached glyph masks: crops are composed from cached per-character masks, which is fast.

The faces are those shipped with matplotlib (a core dependency) plus Pillow's built-in font.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import ImageFont

FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "STIXGeneral.ttf", "STIXGeneralBol.ttf")
CAP_HEIGHT = 0.73  # digit height / font size, about right for these faces


@cache
def font_paths() -> tuple[str, ...]:
    """Paths of the :data:`FONT_FILES` found in matplotlib's data, then ``""`` (Pillow's built-in font)."""
    spec = importlib.util.find_spec("matplotlib")
    roots = spec.submodule_search_locations if spec and spec.submodule_search_locations else []
    found = []
    for root in roots:
        folder = Path(root) / "mpl-data" / "fonts" / "ttf"
        found += [str(folder / name) for name in FONT_FILES if (folder / name).is_file()]
    return (*found, "")  # "" is Pillow's built-in font


@cache
def font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """The face at ``path`` (``""``: Pillow's built-in) at ``size`` pixels, basic layout, cached."""
    if not path:
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@dataclass(frozen=True)
class Glyph:
    """One rendered character: its coverage mask and where it sits relative to the pen."""

    mask: np.ndarray  # float32 coverage in [0, 1], (height, width)
    left: int  # offset of the mask from the pen position (x) and the baseline (y)
    top: int
    advance: float


@cache
def glyph(path: str, size: int, char: str) -> Glyph:
    """One rendered character, cached: composing crops from cached glyphs is what makes drawing fast."""
    face = font(path, size)
    mask, (left, top) = face.getmask2(char, mode="L", anchor="ls")
    width, height = mask.size
    coverage = np.asarray(mask, dtype=np.float32).reshape(height, width) / 255.0
    return Glyph(coverage, left, top, face.getlength(char))


def text_width(path: str, size: int, text: str, tracking: int) -> float:
    """Advance width in pixels of ``text`` with ``tracking`` extra pixels between characters."""
    return sum(glyph(path, size, ch).advance for ch in text) + tracking * max(len(text) - 1, 0)
