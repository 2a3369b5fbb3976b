"""Drawing one crop from a :class:`Scene`: HUD panel, text, icon, shadow, clutter, then degradation.

Every function takes the random generator it draws from and touches no other state (the glyph
cache aside), so a generator seed fixes the pixels. Arrays are ``float32``/``float64`` pixel values
in ``[0, 255]`` while drawing and ``uint8`` at the end; masks are coverage in ``[0, 1]``.
"""

from __future__ import annotations

import io
import math
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from foldedcnns.data.synth.glyphs import CAP_HEIGHT, font_paths, glyph, text_width
from foldedcnns.data.synth.scene import Scene, pick

# Text colours of HUDs (RGB): gold, white, pale blue, green, orange, pale red, cyan, light grey.
PALETTE = np.array([(250, 210, 90), (245, 245, 240), (160, 200, 255), (140, 235, 130), (255, 170, 70),
                    (255, 130, 120), (120, 235, 235), (200, 200, 205)], dtype=np.float32)

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


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Luma of RGB values: ``(..., 3) -> (...)``."""
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


@cache
def _grid(h: int, w: int) -> np.ndarray:
    """Read-only ``(2, h, w)`` float32 row and column indices."""
    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    grid.flags.writeable = False
    return grid


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A HUD panel ``(h, w, 3)``: dark or mid-tone base colour, gradient, smooth texture, sometimes a frame line."""
    base = rng.uniform(5, 70, 3) if rng.random() < 0.75 else rng.uniform(60, 150, 3)
    yy, xx = _grid(h, w)
    angle, freq = rng.uniform(0, 2 * math.pi), rng.uniform(0.05, 0.6)
    wave = np.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    grad = (yy / max(h - 1, 1) - 0.5) * rng.uniform(-40, 40) + (xx / max(w - 1, 1) - 0.5) * rng.uniform(-30, 30)
    img = base + (grad + wave * rng.uniform(0, 18))[..., None] * rng.uniform(0.6, 1.0, 3)
    if rng.random() < 0.35:  # a panel border or separator line
        colour = rng.uniform(80, 220, 3)
        if rng.random() < 0.5:
            row = pick(rng, (0, 1, h - 2, h - 1))
            img[row] = colour
        else:
            col = pick(rng, (0, 1, w - 2, w - 1))
            img[:, col] = colour
    return img


def _text_colour(bg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A ``(3,)`` HUD text colour with at least a random contrast against the panel ``bg`` ``(h, w, 3)``."""
    colour = PALETTE[int(rng.integers(len(PALETTE)))] + rng.uniform(-20, 20, 3)
    want = rng.uniform(*MIN_CONTRAST)
    diff = _luminance(colour) - float(_luminance(bg.mean(axis=(0, 1))))
    if abs(diff) < want:  # darken the panel (or brighten text) until the contrast is reached
        colour = colour + (want - diff if diff >= 0 else -(want + diff))
    return np.clip(colour, 0, 255)


def _draw_icon(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int]) -> None:
    """Draw a ``coin`` (ring) or an ``emblem`` (shield) into an ``L`` layer at full coverage."""
    x0, y0, x1, y1 = box
    if kind == "coin":
        draw.ellipse(box, fill=255)
        inset = max(1, (x1 - x0) // 4)
        draw.ellipse((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=150)
    else:  # emblem: a shield
        mid = (x0 + x1) / 2
        draw.polygon([(x0, y0), (x1, y0), (x1, (y0 + y1) / 2), (mid, y1), (x0, (y0 + y1) / 2)], fill=255)


def _paste_max(canvas: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """``canvas[y:, x:] = max(canvas, mask)`` clipped to the canvas, in place (both 2-D)."""
    h, w = canvas.shape
    mh, mw = mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mw, w), min(y + mh, h)
    if x0 < x1 and y0 < y1:
        region = canvas[y0:y1, x0:x1]
        np.maximum(region, mask[y0 - y:y1 - y, x0 - x:x1 - x], out=region)


def _text_layer(scene: Scene, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Coverage masks ``(h, w)`` of the text and of the icon (None without one).

    The face, size, letter spacing and position are drawn per crop; text too wide for the crop
    shrinks (the icon gives way first).
    """
    paths = font_paths()
    path = paths[int(rng.integers(len(paths)))]
    tracking = pick(rng, TRACKING_PX)
    size = max(MIN_FONT_PX, round(h * float(rng.uniform(*scene.height)) / CAP_HEIGHT))
    width = text_width(path, size, scene.text, tracking)
    icon_w = 0
    if scene.icon:  # the icon gives way before the text does, down to ICON_MIN of the crop height
        room = w - 4 - width
        icon_w = int(np.clip(min(h * float(rng.uniform(*ICON_SIZE)), room), h * ICON_MIN, h))
    avail = w - 2 - (icon_w + 2 if scene.icon else 0)
    if width > avail:  # shrink the text to fit the crop
        size = max(MIN_FONT_PX, int(size * avail / width))
        tracking = min(tracking, 0)
        width = text_width(path, size, scene.text, tracking)
    glyphs = [glyph(path, size, ch) for ch in scene.text]
    inked = [g for g in glyphs if g.mask.size]
    top = min((g.top for g in inked), default=0)
    bottom = max((g.top + g.mask.shape[0] for g in inked), default=0)
    y_top = (h - (bottom - top)) / 2 + int(rng.integers(-JITTER_PX, JITTER_PX + 1)) * 0.5
    baseline = round(y_top - top)
    offset = {"left": 0.1, "center": 0.5, "right": 0.9}[scene.align] * max(avail - width, 0)
    x = 1 + (icon_w + 2 if scene.icon else 0) + offset + int(rng.integers(-JITTER_PX, JITTER_PX + 1))
    x = float(np.clip(x, 0, max(w - width, 0)))
    text = np.zeros((h, w), dtype=np.float32)
    for g in glyphs:
        _paste_max(text, g.mask, round(x) + g.left, baseline + g.top)
        x += g.advance + tracking
    icon = None
    if scene.icon:
        layer = Image.new("L", (w, h))
        y0 = round((h - icon_w) / 2 + int(rng.integers(-1, 2)))
        _draw_icon(ImageDraw.Draw(layer), scene.icon, (1, y0, 1 + icon_w, y0 + icon_w))
        icon = np.asarray(layer, dtype=np.float32) / 255.0
    return text, icon


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Bits of neighbouring HUD elements at the edges of ``img`` ``(h, w, 3)``, in place (bars, pips, a cut-off
    glyph block)."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(0, 3))):
        colour = rng.uniform(60, 255, 3)
        if rng.random() < 0.5:  # a health/mana-like bar along the top or bottom edge
            y = pick(rng, (0, h - 2))
            x0 = int(rng.integers(0, w // 2))
            img[y:y + 2, x0:x0 + int(rng.integers(w // 4, w))] = colour
        else:  # a small block cut by the left or right edge
            bw, bh = int(rng.integers(1, 4)), int(rng.integers(h // 4, h // 2 + 1))
            y = int(rng.integers(0, h - bh + 1))
            x = 0 if rng.random() < 0.5 else w - bw
            img[y:y + bh, x:x + bw] = colour


def _degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, JPEG artefacts and sensor noise: ``(h, w, 3)`` float -> ``(h, w, 3)`` ``uint8``."""
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
