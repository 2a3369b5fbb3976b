"""Contact sheets: labelled grids of enlarged crops, for a person to check what a data set looks like.

:func:`contact_sheet` draws fresh synthetic samples of a game task; :func:`folder_contact_sheet`
shows the first images of each class of an image folder (real data too).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from foldedcnns.data.folder import ImageFolder
from foldedcnns.data.synth.generate import check_seed, render_batch
from foldedcnns.data.synth.glyphs import font, font_paths
from foldedcnns.data.synth.layouts import game_spec
from foldedcnns.errors import ConfigError
from foldedcnns.models.spec import TaskSpec
from foldedcnns.utils.atomic import atomic_save

SHEET_SCALE = 4  # crops are enlarged this many times (nearest neighbour) so a person can read them
SHEET_FONT_SIZE = 14
SHEET_MAX_ROWS_BY_CLASS = 24  # up to this many classes: one row per class; more: a flowing grid
SHEET_COLUMNS = 12
SHEET_ROW_LENGTH = 8  # samples per class in a one-row-per-class sheet
SHEET_GRID_IMAGES = 120  # about this many samples in a flowing-grid sheet
SHEET_MAX_PER_CLASS = 100  # a sheet is for a person to look at


def render_contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str], *, scale: int = SHEET_SCALE,
                         by_class: bool = True, columns: int = SHEET_COLUMNS) -> np.ndarray:
    """A grid of enlarged crops ``(h, w, 3)`` with their labels: ``(H, W, 3)`` RGB ``uint8``.

    ``by_class``: one row per distinct label with the label at the left; else a flowing grid with
    the label under each crop.
    """
    if not images:
        raise ConfigError("a contact sheet needs at least one image")
    h, w = images[0].shape[:2]
    ch, cw = h * scale, w * scale
    face = font(font_paths()[0], SHEET_FONT_SIZE)
    pad = 6
    text_h = SHEET_FONT_SIZE + 4
    if by_class:
        rows: dict[str, list[np.ndarray]] = {}
        for image, label in zip(images, labels, strict=True):
            rows.setdefault(label, []).append(image)
        label_w = int(max(face.getlength(label) for label in rows)) + 2 * pad
        ncols = max(len(v) for v in rows.values())
        sheet = Image.new("RGB", (label_w + ncols * (cw + pad) + pad, len(rows) * (ch + pad) + pad), (255,) * 3)
        draw = ImageDraw.Draw(sheet)
        for r, (label, row) in enumerate(rows.items()):
            y = pad + r * (ch + pad)
            draw.text((pad, y + ch / 2), label, font=face, fill=(0, 0, 0), anchor="lm")
            for c, image in enumerate(row):
                sheet.paste(Image.fromarray(image).resize((cw, ch), Image.NEAREST), (label_w + c * (cw + pad), y))
        return np.asarray(sheet)
    nrows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (cw + pad) + pad, nrows * (ch + text_h + pad) + pad), (255,) * 3)
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = pad + (i % columns) * (cw + pad), pad + (i // columns) * (ch + text_h + pad)
        sheet.paste(Image.fromarray(image).resize((cw, ch), Image.NEAREST), (x, y))
        draw.text((x + cw / 2, y + ch + 2), label, font=face, fill=(0, 0, 0), anchor="mt")
    return np.asarray(sheet)


def _check_per_class(per_class: int | None) -> int | None:
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int)
                                  or not 1 <= per_class <= SHEET_MAX_PER_CLASS):
        raise ConfigError(f"--per-class must be an integer from 1 to {SHEET_MAX_PER_CLASS} for a contact sheet, "
                          f"got {per_class!r}")
    return per_class


def _save_sheet(sheet: np.ndarray, out_path: str | os.PathLike[str]) -> None:
    atomic_save(out_path, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))


def contact_sheet(task: str | os.PathLike[str] | TaskSpec, out_path: str | os.PathLike[str], *,
                  per_class: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Draw samples of every class of a game task and save a labelled PNG grid atomically.

    ``per_class`` defaults to 8 for up to 24 classes (one row per class), else to about 120 crops in
    all (a grid with the label under each crop).
    Returns ``{"path", "classes", "images"}``.
    """
    spec = game_spec(task)
    by_class = spec.num_classes <= SHEET_MAX_ROWS_BY_CLASS
    per_class = _check_per_class(per_class) or (SHEET_ROW_LENGTH if by_class
                                                else max(1, SHEET_GRID_IMAGES // spec.num_classes))
    labels = [k for k in range(spec.num_classes) for _ in range(per_class)]
    images = render_batch(spec, labels, np.random.default_rng(check_seed(seed)))
    names = [spec.class_names[k] for k in labels]
    _save_sheet(render_contact_sheet(list(images), names, by_class=by_class), out_path)
    return {"path": str(out_path), "classes": spec.num_classes, "images": len(images)}


def folder_contact_sheet(root: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                         per_class: int = SHEET_ROW_LENGTH) -> dict[str, Any]:
    """A labelled grid of the first ``per_class`` images of each class of an image folder (real data too)."""
    per_class = _check_per_class(per_class) or SHEET_ROW_LENGTH
    folder = ImageFolder(root, cache=False)
    picked: dict[int, list[int]] = {}
    for i, target in enumerate(folder.targets):
        if len(picked.setdefault(target, [])) < per_class:
            picked[target].append(i)
    order = [i for k in sorted(picked) for i in picked[k]]
    images = [folder[i][0].permute(1, 2, 0).numpy() for i in order]
    names = [folder.classes[folder.targets[i]] for i in order]
    by_class = len(picked) <= SHEET_MAX_ROWS_BY_CLASS
    _save_sheet(render_contact_sheet(images, names, by_class=by_class), out_path)
    return {"path": str(out_path), "classes": len(picked), "images": len(images)}
