"""Synthetic game-screen crops: a stand-in for the original's figshare game data set.

Each game task reads one HUD element from a fixed screen crop (a gold amount, a timer, a squad or
coin count). :func:`render_batch` draws such crops at the task's input size: the value that names
the class, in HUD-like glyph styles (11 typefaces, weights, letter spacing, outlines and shadows),
colours and backgrounds (panels, gradients, textures, neighbouring HUD clutter), then blur, sensor
noise, JPEG artefacts and position jitter. The ``other`` class holds crops that show no valid
reading: clutter without text, other HUD words, or a value in the wrong format. What each task
shows (the label is the part in brackets):

* ``lol/goldnumber-fraction``: a gold amount ``12.[3]k``, the digit after the decimal point;
* ``lol/goldnumber-int``: a gold amount ``[12].3k``, the text before the decimal point;
* ``lol/timer-minutes``: a game clock ``[07]:42``, the minutes;
* ``apex/squad_count_v2``: squads left ``[14]`` next to a small emblem;
* ``sot/coin_count-digits_3_4-v2``: a coin count ``[9]`` next to a coin;
* ``sot/timer3``: a countdown ``[12]m``;
* any other game-family task (a user's description): the class name itself.

:func:`generate_synthetic` writes ``OUT/{train,val,test}/<class>/<n>.png`` atomically, deterministic
for a seed; :func:`contact_sheet` draws a labelled grid of samples.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from foldedcnns.data.imageio import write_png
from foldedcnns.errors import ConfigError
from foldedcnns.models.spec import TaskSpec
from foldedcnns.utils.atomic import atomic_directory

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
OTHER = "other"
MANIFEST = "synth.json"
DEFAULT_WORKERS = 2  # processes drawing classes in parallel

# Typefaces shipped with matplotlib (a core dependency), plus Pillow's built-in font.
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
              "STIXGeneral.ttf", "STIXGeneralBol.ttf")
CAP_HEIGHT = 0.73  # digit height / font size, about right for these faces

# Text colours of HUDs (RGB): gold, white, pale blue, green, orange, pale red, cyan, light grey.
PALETTE = np.array([(250, 210, 90), (245, 245, 240), (160, 200, 255), (140, 235, 130), (255, 170, 70),
                    (255, 130, 120), (120, 235, 235), (200, 200, 205)], dtype=np.float32)
HUD_WORDS = ("KDA", "LVL", "HP", "XP", "MVP", "AFK", "GG", "OK", "CS", "x2", "x3", "REV", "AMMO", "MAP", "VS",
             "WIN", "LOOT", "ZONE", "GOLD", "TIME", "SHOP")
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"

# Difficulty (chosen so a small CNN learns the task well but not perfectly).
MIN_CONTRAST = (45.0, 170.0)  # luminance difference between text and background, drawn per crop
BLUR_SIGMA = (0.0, 1.1)
MIN_BLUR_SIGMA = 0.3  # below this the blur is skipped
NOISE_SIGMA = (0.0, 10.0)
JPEG_PROB, JPEG_QUALITY = 0.35, (35, 90)
JITTER_PX = 2
TRACKING_PX = (-1, 0, 0, 0, 1, 1, 2)  # extra letter spacing, drawn per crop
BLUR_REFERENCE_PX = 22  # BLUR_SIGMA is for crops this tall; shorter crops get proportionally less blur
MIN_FONT_PX = 6
ICON_SIZE = (0.4, 0.6)  # icon side as a fraction of the crop height, drawn per crop
ICON_MIN = 0.3  # smallest icon side, as a fraction of the crop height


@dataclass(frozen=True)
class Scene:
    """What one crop shows: text (empty for clutter only), an optional icon, alignment, text height."""

    text: str
    icon: str | None = None  # "coin", "emblem" or None
    align: str = "center"  # "left", "center" or "right"
    height: tuple[float, float] = (0.55, 0.8)  # digit height as a fraction of the crop height


# ---------------------------------------------------------------------------------------------- task layouts


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One item of a sequence (``Generator.choice`` is slow for single draws)."""
    return items[int(rng.integers(len(items)))]


def _digits(rng: np.random.Generator, low: int, high: int) -> str:
    return str(int(rng.integers(low, high + 1)))


def _hud_word(rng: np.random.Generator) -> str:
    if rng.random() < 0.7:
        return _pick(rng, HUD_WORDS)
    return "".join(_pick(rng, LETTERS) for _ in range(int(rng.integers(2, 5))))


def _other(rng: np.random.Generator, wrong_formats: Sequence[Callable[[np.random.Generator], str]],
           icon: str | None = None) -> Scene:
    """A crop with no valid reading: clutter only, a HUD word, or a value in a wrong format."""
    kind = rng.random()
    if kind < 0.3:
        return Scene("", icon=icon if rng.random() < 0.5 else None)
    if kind < 0.6 or not wrong_formats:
        return Scene(_hud_word(rng), align=_pick(rng, ("left", "center", "right")))
    fmt = wrong_formats[int(rng.integers(len(wrong_formats)))]
    return Scene(fmt(rng), icon=icon if rng.random() < 0.5 else None, align="right")


def _gold(rng: np.random.Generator, integer: str, fraction: str) -> Scene:
    return Scene(f"{integer}.{fraction}k", align="right", height=(0.5, 0.75))


_GOLD_WRONG = (lambda r: _digits(r, 100, 999), lambda r: _digits(r, 1000, 9999), lambda r: "--",
               lambda r: f"{_digits(r, 1, 99)}k")


def _gold_fraction(name: str, rng: np.random.Generator) -> Scene:
    if name == OTHER:
        return _other(rng, _GOLD_WRONG)
    integer = _digits(rng, 0, 9) if rng.random() < 0.4 else _digits(rng, 10, 99)
    return _gold(rng, integer, name)


def _gold_int(name: str, rng: np.random.Generator) -> Scene:
    if name == OTHER:
        return _other(rng, _GOLD_WRONG)
    return _gold(rng, name, _digits(rng, 0, 9))


def _timer_minutes(name: str, rng: np.random.Generator) -> Scene:
    if name == OTHER:
        return _other(rng, (lambda r: "--:--", lambda r: f"{_digits(r, 0, 9)}:{_digits(r, 0, 5)}",
                            lambda r: "PAUSE"))
    return Scene(f"{name}:{int(rng.integers(0, 60)):02d}", height=(0.6, 0.8))


def _squad_count(name: str, rng: np.random.Generator) -> Scene:
    if name == OTHER:
        return _other(rng, (lambda r: "--", lambda r: "?"), icon="emblem")
    return Scene(name, icon="emblem" if rng.random() < 0.7 else None, align="right", height=(0.55, 0.75))


def _coin_count(name: str, rng: np.random.Generator) -> Scene:
    if name == OTHER:
        return _other(rng, (lambda r: "--", lambda r: "x"), icon="coin")
    return Scene(name, icon="coin", align="right", height=(0.55, 0.8))


def _timer3(name: str, rng: np.random.Generator) -> Scene:
    if name == OTHER:
        return _other(rng, (lambda r: "--m", lambda r: "m"))
    return Scene(f"{name}m" if rng.random() < 0.6 else name, height=(0.55, 0.8))


def _generic(class_names: Sequence[str]) -> Callable[[str, np.random.Generator], Scene]:
    """Fallback for a user's game task: the crop shows the class name."""
    def layout(name: str, rng: np.random.Generator) -> Scene:
        if name.lower() == OTHER:
            words = [w for w in HUD_WORDS if w not in class_names]
            return Scene("" if rng.random() < 0.3 else _pick(rng, words))
        return Scene(name)
    return layout


TASK_LAYOUTS: dict[str, Callable[[str, np.random.Generator], Scene]] = {
    "lol/goldnumber-fraction": _gold_fraction,
    "lol/goldnumber-int": _gold_int,
    "lol/timer-minutes": _timer_minutes,
    "apex/squad_count_v2": _squad_count,
    "sot/coin_count-digits_3_4-v2": _coin_count,
    "sot/timer3": _timer3,
}


# ---------------------------------------------------------------------------------------------- drawing


@cache
def _font_paths() -> tuple[str, ...]:
    spec = importlib.util.find_spec("matplotlib")
    roots = spec.submodule_search_locations if spec and spec.submodule_search_locations else []
    found = []
    for root in roots:
        folder = Path(root) / "mpl-data" / "fonts" / "ttf"
        found += [str(folder / name) for name in FONT_FILES if (folder / name).is_file()]
    return (*found, "")  # "" is Pillow's built-in font


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    if not path:
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@dataclass(frozen=True)
class _Glyph:
    mask: np.ndarray  # float32 coverage in [0, 1], (height, width)
    left: int  # offset of the mask from the pen position (x) and the baseline (y)
    top: int
    advance: float


@cache
def _glyph(path: str, size: int, char: str) -> _Glyph:
    """One rendered character, cached: composing crops from cached glyphs is what makes drawing fast."""
    font = _font(path, size)
    mask, (left, top) = font.getmask2(char, mode="L", anchor="ls")
    width, height = mask.size
    coverage = np.asarray(mask, dtype=np.float32).reshape(height, width) / 255.0
    return _Glyph(coverage, left, top, font.getlength(char))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


@cache
def _grid(h: int, w: int) -> np.ndarray:
    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    grid.flags.writeable = False
    return grid


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A HUD panel: dark or mid-tone base colour, gradient, smooth texture, sometimes a frame line."""
    base = rng.uniform(5, 70, 3) if rng.random() < 0.75 else rng.uniform(60, 150, 3)
    yy, xx = _grid(h, w)
    angle, freq = rng.uniform(0, 2 * math.pi), rng.uniform(0.05, 0.6)
    wave = np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    grad = (yy / max(h - 1, 1) - 0.5) * rng.uniform(-40, 40) + (xx / max(w - 1, 1) - 0.5) * rng.uniform(-30, 30)
    img = base + (grad + wave * rng.uniform(0, 18))[..., None] * rng.uniform(0.6, 1.0, 3)
    if rng.random() < 0.35:  # a panel border or separator line
        colour = rng.uniform(80, 220, 3)
        if rng.random() < 0.5:
            row = _pick(rng, (0, 1, h - 2, h - 1))
            img[row] = colour
        else:
            col = _pick(rng, (0, 1, w - 2, w - 1))
            img[:, col] = colour
    return img


def _text_colour(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    colour = PALETTE[int(rng.integers(len(PALETTE)))] + rng.uniform(-20, 20, 3)
    want = rng.uniform(*MIN_CONTRAST)
    diff = _luminance(colour) - float(_luminance(bg.mean(axis=(0, 1))))
    if abs(diff) < want:  # darken the panel (or brighten text) until the contrast is reached
        colour = colour + (want - diff if diff >= 0 else -(want + diff))
    return np.clip(colour, 0, 255)


def _draw_icon(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if kind == "coin":
        draw.ellipse(box, fill=255)
        inset = max(1, (x1 - x0) // 4)
        draw.ellipse((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=150)
    else:  # emblem: a shield
        mid = (x0 + x1) / 2
        draw.polygon([(x0, y0), (x1, y0), (x1, (y0 + y1) / 2), (mid, y1), (x0, (y0 + y1) / 2)], fill=255)


def _text_width(path: str, size: int, text: str, tracking: int) -> float:
    return sum(_glyph(path, size, ch).advance for ch in text) + tracking * max(len(text) - 1, 0)


def _paste_max(canvas: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """``canvas[y:, x:] = max(canvas, mask)`` clipped to the canvas."""
    h, w = canvas.shape
    mh, mw = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mw, w), min(y + mh, h)
    if x0 < x1 and y0 < y1:
        region = canvas[y0:y1, x0:x1]
        np.maximum(region, mask[y0 - y:y1 - y, x0 - x:x1 - x], out=region)


def _text_layer(scene: Scene, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Alpha masks (float in [0, 1]) of the text and of the icon."""
    paths = _font_paths()
    path = paths[int(rng.integers(len(paths)))]
    tracking = _pick(rng, TRACKING_PX)
    size = max(MIN_FONT_PX, round(h * float(rng.uniform(*scene.height)) / CAP_HEIGHT))
    width = _text_width(path, size, scene.text, tracking)
    icon_w = 0
    if scene.icon:  # the icon gives way before the text does, down to ICON_MIN of the crop height
        room = w - 4 - width
        icon_w = int(np.clip(min(h * float(rng.uniform(*ICON_SIZE)), room), h * ICON_MIN, h))
    avail = w - 2 - (icon_w + 2 if scene.icon else 0)
    if width > avail:  # shrink the text to fit the crop
        size = max(MIN_FONT_PX, int(size * avail / width))
        tracking = min(tracking, 0)
        width = _text_width(path, size, scene.text, tracking)
    glyphs = [_glyph(path, size, ch) for ch in scene.text]
    inked = [g for g in glyphs if g.mask.size]
    top = min((g.top for g in inked), default=0)
    bottom = max((g.top + g.mask.shape[0] for g in inked), default=0)
    y_top = (h - (bottom - top)) / 2 + int(rng.integers(-JITTER_PX, JITTER_PX + 1)) * 0.5
    baseline = round(y_top - top)
    offset = {"left": 0.1, "center": 0.5, "right": 0.9}[scene.align] * max(avail - width, 0)
    x = 1 + (icon_w + 2 if scene.icon else 0) + offset + int(rng.integers(-JITTER_PX, JITTER_PX + 1))
    x = float(np.clip(x, 0, max(w - width, 0)))
    text = np.zeros((h, w), dtype=np.float32)
    for glyph in glyphs:
        _paste_max(text, glyph.mask, round(x) + glyph.left, baseline + glyph.top)
        x += glyph.advance + tracking
    icon = None
    if scene.icon:
        layer = Image.new("L", (w, h))
        y0 = round((h - icon_w) / 2 + int(rng.integers(-1, 2)))
        _draw_icon(ImageDraw.Draw(layer), scene.icon, (1, y0, 1 + icon_w, y0 + icon_w))
        icon = np.asarray(layer, dtype=np.float32) / 255.0
    return text, icon


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Bits of neighbouring HUD elements at the crop's edges (bars, pips, a cut-off glyph block)."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 3))):
        colour = rng.uniform(60, 255, 3)
        if rng.random() < 0.5:  # a health/mana-like bar along the top or bottom edge
            y = _pick(rng, (0, h - 2))
            x0 = int(rng.integers(0, w // 2))
            img[y:y + 2, x0:x0 + int(rng.integers(w // 4, w))] = colour
        else:  # a small block cut by the left or right edge
            bw, bh = int(rng.integers(1, 4)), int(rng.integers(h // 4, h // 2 + 1))
            y = int(rng.integers(0, h - bh + 1))
            x = 0 if rng.random() < 0.5 else w - bw
            img[y:y + bh, x:x + bw] = colour


def _degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, JPEG artefacts and sensor noise."""
    sigma = rng.uniform(*BLUR_SIGMA) * min(1.0, img.shape[0] / BLUR_REFERENCE_PX)
    jpeg = rng.random() < JPEG_PROB
    if sigma > MIN_BLUR_SIGMA or jpeg:
        out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        if sigma > MIN_BLUR_SIGMA:
            out = out.filter(ImageFilter.GaussianBlur(sigma))
        if jpeg:
            buffer = io.BytesIO()
            out.save(buffer, format="JPEG", quality=int(rng.integers(*JPEG_QUALITY)))
            out = Image.open(buffer)
        img = np.asarray(out, dtype=np.float32)
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(*NOISE_SIGMA))
    return np.clip(img + noise + 0.5, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one crop: ``(height, width, 3)`` RGB ``uint8``."""
    img = _background(height, width, rng)
    text, icon = _text_layer(scene, height, width, rng)
    colour = _text_colour(img, rng)
    if icon is not None:
        icon_colour = np.array((235, 190, 60), np.float32) if scene.icon == "coin" else rng.uniform(150, 255, 3)
        img = img * (1 - icon[..., None]) + icon_colour * icon[..., None]
    if rng.random() < 0.5:  # outline or drop shadow, as HUD text often has
        shadow = np.zeros_like(text)
        shift = 1
        shadow[shift:, shift:] = text[:-shift, :-shift]
        if rng.random() < 0.5:
            shadow = np.maximum(shadow, text)
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                shadow = np.maximum(shadow, np.roll(text, (dy, dx), axis=(0, 1)))
        dark = rng.uniform(0, 40, 3)
        img = img * (1 - shadow[..., None]) + dark * shadow[..., None]
    img = img * (1 - text[..., None]) + colour * text[..., None]
    if rng.random() < 0.5:
        _clutter(img, rng)
    return _degrade(img, rng)


# ---------------------------------------------------------------------------------------------- public API


def _spec(task: str | os.PathLike[str] | TaskSpec) -> TaskSpec:
    from foldedcnns.models import get_task

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


def layout_for(spec: TaskSpec) -> Callable[[str, np.random.Generator], Scene]:
    """The scene generator of a task: a built-in HUD layout, or the class-name fallback."""
    return TASK_LAYOUTS.get(spec.name) or _generic(spec.class_names)


def render_batch(task: str | os.PathLike[str] | TaskSpec, labels: Sequence[int],
                 rng: np.random.Generator | int) -> np.ndarray:
    """Draw one crop per label (class index) of a game task: ``(N, H, W, 3)`` RGB ``uint8``."""
    spec = _spec(task)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    layout = layout_for(spec)
    out = np.empty((len(labels), spec.height, spec.width, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        label = int(label)
        if not 0 <= label < spec.num_classes:
            raise ConfigError(f"label {label} is not a class of {spec.name} (0..{spec.num_classes - 1})")
        out[i] = render_scene(layout(spec.class_names[label], rng), spec.height, spec.width, rng)
    return out


def split_counts(per_class: int, splits: Sequence[float]) -> dict[str, int]:
    """Images per class in train, val and test; every split gets at least one."""
    if len(splits) != len(SPLITS) or any(f <= 0 for f in splits) or abs(sum(splits) - 1) > 1e-6:
        raise ConfigError(f"splits must be three positive fractions summing to 1 (train, val, test), got {splits}")
    if per_class < len(SPLITS):
        raise ConfigError(f"per-class count must be at least {len(SPLITS)} (one image per split), got {per_class}")
    val = max(1, round(per_class * splits[1]))
    test = max(1, round(per_class * splits[2]))
    return {"train": per_class - val - test, "val": val, "test": test}


def _draw_class(spec: TaskSpec, k: int, seed: int, counts: dict[str, int], root: Path) -> int:
    """Draw and write every image of class ``k`` (runs in a worker process)."""
    name = spec.class_names[k]
    layout = layout_for(spec)
    rng = np.random.default_rng([seed, k])
    for split in SPLITS:
        folder = root / split / name
        folder.mkdir(parents=True)
        for n in range(counts[split]):
            write_png(folder / f"{n}.png", render_scene(layout(name, rng), spec.height, spec.width, rng))
    return sum(counts.values())


def _process_pool(workers: int) -> ProcessPoolExecutor:
    # fork: workers inherit the imported modules (torch included) instead of importing them again
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def generate_synthetic(task: str | os.PathLike[str] | TaskSpec, out_dir: str | os.PathLike[str], *,
                       per_class: int = 200, seed: int = 0,
                       splits: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, overwrite: bool = False,
                       workers: int | None = None, progress: bool = False) -> dict[str, int]:
    """Write ``OUT/{train,val,test}/<class>/<n>.png`` for a game task; return the image count per split.

    ``per_class`` images are drawn per class and split by ``splits``. Class ``k`` is drawn from the
    random stream ``(seed, k)``, so the output is the same for a seed on every machine, whatever the
    number of ``workers`` (processes; default: up to 2), and a class's images do not depend on the
    others. ``OUT`` appears only when complete, with ``synth.json`` describing it.
    """
    from tqdm import tqdm

    spec = _spec(task)
    counts = split_counts(per_class, splits)
    workers = workers or min(DEFAULT_WORKERS, os.cpu_count() or 1)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp, \
            tqdm(total=per_class * spec.num_classes, desc=f"drawing {spec.name}", unit="img",
                 disable=not progress, mininterval=0.5) as bar:
        if workers == 1:
            for k in range(spec.num_classes):
                bar.update(_draw_class(spec, k, seed, counts, tmp))
        else:
            with _process_pool(workers) as pool:
                jobs = [pool.submit(_draw_class, spec, k, seed, counts, tmp) for k in range(spec.num_classes)]
                for job in as_completed(jobs):
                    bar.update(job.result())
        totals = {split: counts[split] * spec.num_classes for split in SPLITS}
        manifest = {"task": spec.name, "seed": seed, "per_class": per_class, "splits": list(splits),
                    "counts": totals, "classes": list(spec.class_names), "size": [spec.height, spec.width]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return totals


# ---------------------------------------------------------------------------------------------- contact sheets

SHEET_SCALE = 4  # crops are enlarged this many times (nearest neighbour) so a person can read them
SHEET_FONT_SIZE = 14
SHEET_MAX_ROWS_BY_CLASS = 24  # up to this many classes: one row per class; more: a flowing grid
SHEET_COLUMNS = 12
SHEET_ROW_LENGTH = 8  # samples per class in a one-row-per-class sheet
SHEET_GRID_IMAGES = 120  # about this many samples in a flowing-grid sheet


def render_contact_sheet(images: Sequence[np.ndarray], labels: Sequence[str], *, scale: int = SHEET_SCALE,
                         by_class: bool = True, columns: int = SHEET_COLUMNS) -> np.ndarray:
    """A grid of enlarged crops with their labels: ``(H, W, 3)`` RGB ``uint8``.

    ``by_class``: one row per distinct label with the label at the left; else a flowing grid with
    the label under each crop.
    """
    if not images:
        raise ConfigError("a contact sheet needs at least one image")
    h, w = images[0].shape[:2]
    ch, cw = h * scale, w * scale
    font = _font(_font_paths()[0], SHEET_FONT_SIZE)
    pad = 6
    text_h = SHEET_FONT_SIZE + 4
    if by_class:
        rows: dict[str, list[np.ndarray]] = {}
        for image, label in zip(images, labels, strict=True):
            rows.setdefault(label, []).append(image)
        label_w = int(max(font.getlength(label) for label in rows)) + 2 * pad
        ncols = max(len(v) for v in rows.values())
        sheet = Image.new("RGB", (label_w + ncols * (cw + pad) + pad, len(rows) * (ch + pad) + pad), (255,) * 3)
        draw = ImageDraw.Draw(sheet)
        for r, (label, row) in enumerate(rows.items()):
            y = pad + r * (ch + pad)
            draw.text((pad, y + ch / 2), label, font=font, fill=(0, 0, 0), anchor="lm")
            for c, image in enumerate(row):
                sheet.paste(Image.fromarray(image).resize((cw, ch), Image.NEAREST), (label_w + c * (cw + pad), y))
        return np.asarray(sheet)
    nrows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (cw + pad) + pad, nrows * (ch + text_h + pad) + pad), (255,) * 3)
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = pad + (i % columns) * (cw + pad), pad + (i // columns) * (ch + text_h + pad)
        sheet.paste(Image.fromarray(image).resize((cw, ch), Image.NEAREST), (x, y))
        draw.text((x + cw / 2, y + ch + 2), label, font=font, fill=(0, 0, 0), anchor="mt")
    return np.asarray(sheet)


def contact_sheet(task: str | os.PathLike[str] | TaskSpec, out_path: str | os.PathLike[str], *,
                  per_class: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Draw samples of every class of a game task and save a labelled PNG grid atomically.

    ``per_class`` defaults to 8 for up to 24 classes (one row per class), else to about 120 crops in
    all (a grid with the label under each crop).
    Returns ``{"path", "classes", "images"}``.
    """
    from foldedcnns.utils.atomic import atomic_save

    spec = _spec(task)
    by_class = spec.num_classes <= SHEET_MAX_ROWS_BY_CLASS
    per_class = per_class or (SHEET_ROW_LENGTH if by_class else max(1, SHEET_GRID_IMAGES // spec.num_classes))
    labels = [k for k in range(spec.num_classes) for _ in range(per_class)]
    images = render_batch(spec, labels, np.random.default_rng(seed))
    names = [spec.class_names[k] for k in labels]
    sheet = render_contact_sheet(list(images), names, by_class=by_class)
    atomic_save(out_path, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))
    return {"path": str(out_path), "classes": spec.num_classes, "images": len(images)}


def folder_contact_sheet(root: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                         per_class: int = SHEET_ROW_LENGTH) -> dict[str, Any]:
    """A labelled grid of the first ``per_class`` images of each class of an image folder (real data too)."""
    from foldedcnns.data.folder import ImageFolder
    from foldedcnns.utils.atomic import atomic_save

    folder = ImageFolder(root, cache=False)
    picked: dict[int, list[int]] = {}
    for i, target in enumerate(folder.targets):
        if len(picked.setdefault(target, [])) < per_class:
            picked[target].append(i)
    order = [i for k in sorted(picked) for i in picked[k]]
    images = [folder[i][0].permute(1, 2, 0).numpy() for i in order]
    names = [folder.classes[folder.targets[i]] for i in order]
    by_class = len(picked) <= SHEET_MAX_ROWS_BY_CLASS
    sheet = render_contact_sheet(images, names, by_class=by_class)
    atomic_save(out_path, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))
    return {"path": str(out_path), "classes": len(picked), "images": len(images)}
