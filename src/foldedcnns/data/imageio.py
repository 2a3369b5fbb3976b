"""Small image helpers shared by the data modules: decode, encode, nearest resize, size checks.

Decoding comes in two steps where the size matters before the pixels do: :func:`open_image` reads
only the header (Pillow is lazy), so a caller can check the declared width and height against its own
limit, then :func:`decode_image` decodes (and optionally crops) the pixels. :func:`read_image` is both.

Images are ``(H, W, 3)`` RGB ``uint8`` NumPy arrays here; the datasets turn them into ``(C, H, W)``
tensors. Nearest-neighbour resizing follows OpenCV's ``INTER_NEAREST`` (source index
``floor(i * src / dst)``), the interpolation the original NoScope preparation used; it is computed
in exact integer arithmetic, and :func:`foldedcnns.data.transforms.resize` uses the same indices, so
frames resized here and batches resized on the device agree pixel for pixel.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from foldedcnns.errors import DataError

IMG_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
PNG_COMPRESSION = 1  # zlib level for written PNGs: fast; the images are tiny
MAX_SIDE = 8192  # largest height or width an image is resized to (a larger one is a typo, and 200 MB a frame)

# What Pillow raises on a file that is not an image or is damaged (UnidentifiedImageError is an OSError;
# a broken PNG chunk is a SyntaxError; a bad zlib stream is zlib.error).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a non-hidden file name with one of :data:`IMG_EXTENSIONS` (case-insensitive)."""
    name = os.fspath(path).rsplit(os.sep, 1)[-1]
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


class ImageTooLarge(DataError):
    """An image whose header declares more pixels than will be decoded (Pillow's decompression-bomb limit)."""


# Raster formats Pillow decodes itself. Others it recognises are refused: EPS, for one, would run Ghostscript
# on untrusted input, which no pixel limit bounds.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


def open_image(source: str | os.PathLike[str] | BinaryIO) -> Image.Image:
    """Open an image reading only its header: ``size`` and ``mode`` are known, no pixel is decoded yet.

    Pillow decodes lazily, so a declared size can be checked (``width * height``) before
    :func:`decode_image` allocates it. Only :data:`IMAGE_FORMATS` are opened. A missing or unreadable file
    raises a one-line
    :class:`DataError`; a size past Pillow's own bomb limit :class:`ImageTooLarge`.
    """
    try:
        return Image.open(source, formats=IMAGE_FORMATS)
    except FileNotFoundError as exc:
        raise DataError(f"image {source} does not exist; check the path or rebuild the image folder") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image {source} declares too many pixels to decode ({exc}); resize it or "
                            "replace the file") from exc
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {source} ({exc}); the file is corrupt, replace or delete it") from exc


def decode_image(img: Image.Image, box: tuple[int, int, int, int] | None = None, where: object = None
                 ) -> np.ndarray:
    """Decode an image from :func:`open_image` to ``(H, W, 3)`` RGB ``uint8``; ``box = (x, y, w, h)`` crops it
    before the conversion, so only the box is converted (the same pixels as converting, then cropping).

    ``where`` names the image in errors (default: its file name). The caller checks that ``box`` fits.
    """
    try:
        img.load()
        if box is not None:
            x, y, w, h = box
            img = img.crop((x, y, x + w, y + h))
        return np.asarray(img.convert("RGB"))
    except _DECODE_ERRORS as exc:
        name = where if where is not None else getattr(img, "filename", "") or "the data"
        raise DataError(f"cannot decode image {name} ({exc}); the file is corrupt, replace or delete it") from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks after which Pillow and OpenCV may give other colours (gamma, colour profiles, transparency, palettes)
_PNG_COLOUR_CHUNKS = frozenset({b"gAMA", b"cHRM", b"iCCP", b"sRGB", b"sBIT", b"tRNS", b"PLTE", b"eXIf"})


def plain_png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` declared by a plain PNG, from its header, when OpenCV is installed; else None.

    Plain: 8-bit grey, RGB or RGBA, every chunk whole with its CRC right up to ``IEND``, and no chunk before the
    first ``IDAT`` that could make Pillow's and OpenCV's colours differ (:data:`_PNG_COLOUR_CHUNKS`). Such a
    PNG decodes to the same pixels with :func:`decode_plain_png` as with :func:`decode_image`, in about half the
    time for a small image (no Pillow object, one C call); anything else goes through Pillow, which names
    what is wrong with a damaged file (libpng would print its own line to stderr).
    """
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 45 or _opencv() is None:
        return None
    width, height, depth, colour = struct.unpack_from(">IIBB", data, 16)
    bomb = 2 * (Image.MAX_IMAGE_PIXELS or width * height)  # past it Pillow refuses the image, naming the problem
    if depth != 8 or colour not in (0, 2, 6) or not 0 < width * height <= bomb:
        return None
    view, at, pixels = memoryview(data), 8, False
    while at + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, at)
        end = at + 8 + length
        if end + 4 > len(data) or zlib.crc32(view[at + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            return None
        if kind == b"IEND":
            return (width, height) if pixels else None
        pixels = pixels or kind == b"IDAT"
        if not pixels and kind in _PNG_COLOUR_CHUNKS:
            return None
        at = end + 4
    return None


def decode_plain_png(data: bytes, box: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
    """A plain PNG (:func:`plain_png_size`) decoded by OpenCV to ``(H, W, 3)`` RGB ``uint8`` (a view), cropped to
    ``box = (x, y, w, h)``; None when OpenCV cannot decode it (the caller then asks Pillow, which says why)."""
    cv2 = _opencv()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        return None
    if box is not None:
        x, y, w, h = box
        bgr = bgr[y:y + h, x:x + w]
    return bgr[:, :, ::-1]


def read_image(path: str | os.PathLike[str] | BinaryIO) -> np.ndarray:
    """Decode an image file (or an open binary file) to an ``(H, W, 3)`` RGB ``uint8`` array: a plain PNG by
    OpenCV (:func:`plain_png_size`), anything else by Pillow.

    A missing, truncated or corrupt file raises a one-line :class:`DataError` naming the file.
    """
    data = _png_bytes(path)
    if data is not None:
        if plain_png_size(data) is not None and (frame := decode_plain_png(data)) is not None:
            return np.ascontiguousarray(frame)
        path = io.BytesIO(data) if not isinstance(path, str | os.PathLike) else path
    with open_image(path) as img:
        return decode_image(img, where=path)


def _png_bytes(source: str | os.PathLike[str] | BinaryIO) -> bytes | None:
    """The bytes of a ``.png`` file or of an open binary file (read whole), when OpenCV could decode them;
    else None (Pillow then reads the source itself, and names a missing file)."""
    if _opencv() is None:
        return None
    if not isinstance(source, str | os.PathLike):
        return source.read()
    if not os.fspath(source).lower().endswith(".png"):
        return None
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except OSError:
        return None


@functools.cache
def _opencv() -> Any:
    """The cv2 module when installed ('foldedcnns[video]' or '[serve]'), else None; imported on first use."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - depends on the installation
        return None
    return cv2


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` RGB ``uint8`` array as a PNG (not atomic: callers write into a temp folder).

    Uses OpenCV's encoder when it is installed (faster for tiny images), else Pillow's.
    """
    cv2 = _opencv()
    if cv2 is not None:
        ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]),
                                [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
        if not ok:
            raise DataError(f"cannot encode a {rgb.shape} image as PNG for {path}")
        with open(path, "wb") as handle:
            handle.write(data.tobytes())
    else:
        Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="PNG", compress_level=PNG_COMPRESSION)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source indices of a nearest-neighbour resize from ``src`` to ``dst`` pixels (OpenCV's rule)."""
    return (np.arange(dst, dtype=np.int64) * src) // dst


def resize_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W, ...)`` array to ``size = (height, width)``."""
    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image
    rows, cols = nearest_indices(h, size[0]), nearest_indices(w, size[1])
    return image[rows[:, None], cols[None, :]]


def check_size(size: tuple[int, int] | int | None) -> tuple[int, int] | None:
    """Normalise a size argument to ``(height, width)``: an int means a square, each side 1 to :data:`MAX_SIDE`."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE for v in pair):
        raise DataError(f"size must be a positive int or a (height, width) pair of ints from 1 to {MAX_SIDE}, "
                        f"got {size!r}")
    return (int(pair[0]), int(pair[1]))


