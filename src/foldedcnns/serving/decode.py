"""Request bodies to model-ready images: ``image/*``, ``multipart/form-data`` and ``application/x-npy``.

* ``image/png``, ``image/jpeg``, ... (any ``image/*`` Pillow reads): one image;
* ``multipart/form-data``: one image per file part, in the parts' order; a text field ``crop`` is the
  crop (as the ``crop`` query parameter);
* ``application/x-npy``: a NumPy ``.npy`` array, uint8 ``(N, H, W, 3)`` (or one ``(H, W, 3)`` image),
  for high-rate clients that skip the PNG round trip.

What a request may cost is checked from headers before any pixel is decoded or allocated
(:mod:`foldedcnns.serving.limits`: each image's declared width x height, their sum, the crop), and an ``.npy``
header's dtype, shape and byte count against the body. Past a limit: 413 (or 400) with one line, nothing
decoded. Then the images are decoded (:func:`foldedcnns.data.imageio.decode_image`; a plain PNG by OpenCV when
it is installed, :func:`~foldedcnns.data.imageio.decode_plain_png`: the same pixels in half the time, its size
read from its header without Pillow), cropped and resized
(:func:`foldedcnns.inference.preprocess.prepare_frame`), exactly as ``foldedcnns predict`` prepares files,
on the decode executor in slices of at most :data:`DECODE_SLICE_PIXELS`, the request's deadline checked
before each slice: one request never holds a decode thread for long, and a request whose client has given up
costs no decoding. Small work stays on the event loop: a lone image of at most :data:`INLINE_IMAGE_PIXELS`
declared pixels and an ``.npy`` request of at most :data:`INLINE_NPY_PIXELS`, whose decode or copy costs
less than the two thread hops it would take (``benchmarks/serve.py``; docs/serving.md, "Where the time
goes").

Problems are :class:`ServingError` with the HTTP status (400, 413, 415, 504) and a one-line message.
:func:`decode_request` is the whole path from a request to images, shared by the native server and the
Ray Serve replica.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import re
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
from PIL import Image

from foldedcnns.data.crop import Crop
from foldedcnns.data.imageio import ImageTooLarge, decode_image, decode_plain_png, open_image, plain_png_size
from foldedcnns.errors import DataError, FoldedCNNsError, first_line
from foldedcnns.inference.preprocess import prepare_frame, stack_frames
from foldedcnns.serving.errors import (
    BadRequest,
    ClientDisconnected,
    DeadlineExceeded,
    RequestTooLarge,
    UnsupportedMediaType,
)
from foldedcnns.serving.limits import (
    PixelLimits,
    RequestBudget,
    check_fits,
    check_pixels,
    pixel_limits,
    too_many,
    where_in,
)
from foldedcnns.serving.metrics import require

NPY = "application/x-npy"
MULTIPART = "multipart/form-data"
MAX_PARTS = 4096
MEDIA_TYPES = "image/png, image/jpeg (any image/*), multipart/form-data or application/x-npy"
DECODE_SLICE_PIXELS = 1920 * 1080  # one decode-thread job decodes images of at most this many pixels in all
#                                    (one larger image is a job of its own), then other requests get a turn
INLINE_IMAGE_PIXELS = 256 * 256  # one image of at most this many declared pixels is decoded on the event loop,
#                                   not on a decode thread: the hop costs more than the decode (below)
INLINE_NPY_PIXELS = 1 << 20      # an .npy request of at most this many pixels in all is copied (and resized) there


async def decode_request(headers: Mapping[str, str], chunks: AsyncIterator[bytes], query: Mapping[str, str],
                         hw: tuple[int, int], *, budget: RequestBudget | None = None, executor: Executor | None = None,
                         deadline: float | None = None, admit: Callable[[int], None] | None = None) -> np.ndarray:
    """The images of one ``POST /v1/predict`` as uint8 ``(N, H, W, 3)`` at ``hw``.

    Media type checked (415); body read up to ``budget.max_body`` bytes (413; ``budget`` default
    :class:`RequestBudget`); a multipart body split into its file parts (its ``crop`` field used unless the
    query has one); then, before any pixel is decoded, the declared sizes checked (:func:`pixel_limits` of
    ``budget``: 413; a crop outside an image: 400), ``admit(n)`` called with the request's image count (it
    raises to refuse, e.g. 503 when the queue has no room) and ``deadline`` (the event loop's ``time()``;
    None: none) checked (504). Decoding, cropping and resizing run on ``executor`` (None: the loop's
    default), in slices, the deadline checked before each
    (400 for what cannot be decoded); a small lone image or ``.npy`` request runs here (module doc).
    """
    budget = budget or RequestBudget()
    kind = check_media_type(headers.get("content-type"))
    body = await read_body(chunks, budget.max_body, headers.get("content-length"))
    loop = asyncio.get_running_loop()
    check_deadline(deadline, loop, "before its images were decoded")
    crop = query.get("crop")
    parts: list[bytes] = [body]
    if kind == MULTIPART:
        parts, form_crop = await split_multipart(headers, body, budget.max_body)
        crop = crop or form_crop
    box = parse_crop(crop)
    limits = pixel_limits(hw, box, budget)
    if kind == NPY:
        array = read_npy(body, limits, box)
        if admit is not None:
            admit(len(array))
        check_deadline(deadline, loop, "before its images were decoded")
        if array.shape[0] * array.shape[1] * array.shape[2] <= INLINE_NPY_PIXELS:
            return _prepare_npy(array, hw, box)
        return await loop.run_in_executor(executor, _prepare_npy, array, hw, box)
    if len(parts) == 1:  # one image: its header read here; a small one decoded here too, a larger one in one job
        if admit is not None:
            admit(1)
        (img,) = open_parts(parts, limits, box)
        with img:
            if img.width * img.height <= INLINE_IMAGE_PIXELS:
                return decode_parts([img], 0, 1, hw, box)
            return await loop.run_in_executor(executor, decode_parts, [img], 0, 1, hw, box)
    images = await loop.run_in_executor(executor, open_parts, parts, limits, box)
    try:
        if admit is not None:
            admit(len(images))
        out = np.empty((len(images), hw[0], hw[1], 3), np.uint8)
        for start, stop in decode_slices([img.width * img.height for img in images]):
            check_deadline(deadline, loop, f"before image {start} of {len(images)} was decoded")
            out[start:stop] = await loop.run_in_executor(executor, decode_parts, images[start:stop], start,
                                                         len(images), hw, box)
        return out
    finally:
        for img in images:
            img.close()


def media_type(content_type: str | None) -> str:
    """``'Image/PNG; charset=x'`` -> ``'image/png'``; a missing header is ``''``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_media_type(content_type: str | None) -> str:
    kind = media_type(content_type)
    if not (kind.startswith("image/") or kind in (MULTIPART, NPY)):
        raise UnsupportedMediaType(f"unsupported media type {kind or '(none)'!r}; send {MEDIA_TYPES}")
    return kind


async def read_body(chunks: AsyncIterator[bytes], limit: int, content_length: str | None = None) -> bytes:
    """The request body, at most ``limit`` bytes (else 413 at once, without reading the rest). A client that
    disconnects part-way (Starlette's ``ClientDisconnect``) is :class:`ClientDisconnected` (499): counted,
    not an error of the server. Time limits are the caller's: the native server reads through
    :func:`foldedcnns.serving.connections.timed_chunks` (408, and 503 at the drain deadline)."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise RequestTooLarge(f"body of {int(content_length)} bytes exceeds the limit of {limit} bytes "
                              "(--max-body-mb); send fewer or smaller images per request")
    body, size = [], 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"body exceeds the limit of {limit} bytes (--max-body-mb); send fewer or "
                                      "smaller images per request")
            body.append(chunk)
    except Exception as exc:
        if type(exc).__name__ != "ClientDisconnect":  # starlette.requests.ClientDisconnect, not imported here
            raise
        raise ClientDisconnected(f"the client disconnected after {size} bytes of the body") from None
    if size == 0:
        raise BadRequest("empty body; send one image, a multipart form of images or an .npy array")
    return b"".join(body)


async def split_multipart(headers: Mapping[str, str], body: bytes, limit: int) -> tuple[list[bytes], str | None]:
    """The file parts of a ``multipart/form-data`` body, in order, and its ``crop`` field if any."""
    formparsers = require("starlette.formparsers", "multipart requests")

    async def stream() -> AsyncIterator[bytes]:
        yield body
        yield b""

    try:
        form = await formparsers.MultiPartParser(headers, stream(), max_files=MAX_PARTS, max_fields=16,
                                                 max_part_size=limit).parse()
    except (formparsers.MultiPartException, ValueError, KeyError) as exc:
        raise BadRequest(f"cannot parse the multipart body: {first_line(exc)}") from exc
    files: list[bytes] = []
    crop = None
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                if name != "crop":
                    raise BadRequest(f"multipart field {name!r} is not a file; send each image as a file part")
                crop = value
            else:
                files.append(await value.read())
    finally:
        await form.close()
    if not files:
        raise BadRequest("the multipart body has no file parts; send each image as a file part")
    return files, crop


def parse_crop(crop: str | None) -> Crop | None:
    """The request's ``crop`` (query or form field), checked: a bad one is 400 before the body is decoded."""
    try:
        return Crop.parse(crop) if crop else None
    except FoldedCNNsError as exc:
        raise BadRequest(first_line(exc, 300)) from exc


def check_deadline(deadline: float | None, loop: asyncio.AbstractEventLoop, when: str) -> None:
    """504 when the request's ``deadline`` (the loop's ``time()``) has passed: its client has given up, so its
    images are not decoded."""
    if deadline is not None and loop.time() > deadline:
        late = (loop.time() - deadline) * 1000
        raise DeadlineExceeded(f"the request's deadline passed {late:.0f} ms {when}; dropped without decoding "
                               "the rest (send a longer X-Request-Timeout-Ms or retry when the server is less busy)")


# The header np.save writes for a C-order uint8 (N, H, W, 3) array, format 1.0: matched whole, else NumPy parses it.
_NPY_PLAIN_HEADER = re.compile(rb"\x93NUMPY\x01\x00..\{'descr': '\|u1', 'fortran_order': False, "
                               rb"'shape': \((\d{1,12}), (\d{1,12}), (\d{1,12}), (3)\), \} *\n", re.DOTALL)


def read_npy(body: bytes, limits: PixelLimits, box: Crop | None = None) -> np.ndarray:
    """The images of an ``.npy`` body as a uint8 ``(N, H, W, 3)`` view of ``body``, nothing allocated: the header
    is parsed alone (never unpickling), its dtype, shape, declared pixels and byte count checked first (400, 413),
    and the crop against the declared size (400)."""
    plain = _NPY_PLAIN_HEADER.match(body)
    if plain is not None:  # what np.save writes for a C-order uint8 (N, H, W, 3), read without NumPy's parser
        shape, fortran_order, dtype = tuple(int(d) for d in plain.groups()), False, np.dtype(np.uint8)
        offset = plain.end()
    else:
        shape, fortran_order, dtype, offset = _npy_header(body)
    if dtype != np.uint8 or len(shape) not in (3, 4) or shape[-1] != 3 or min(shape) < 0:
        raise BadRequest(f"the .npy array must be uint8 (N, H, W, 3) or (H, W, 3), got {dtype} {shape}")
    shape = (1, *shape) if len(shape) == 3 else shape
    count, height, width = shape[0], shape[1], shape[2]
    if count == 0:
        raise BadRequest("the .npy array holds no images")
    if height == 0 or width == 0:
        raise BadRequest(f"the .npy images are empty (shape {shape}); send images of at least one pixel")
    if height * width > limits.image:
        raise too_many(f"each .npy image ({width}x{height})", height * width, limits.image)
    if count * height * width > limits.request:
        raise too_many(f"the request ({count:,} images)", count * height * width, limits.request, "request")
    check_fits(box, width, height, "the .npy images")
    size = math.prod(shape)
    if len(body) - offset != size:
        raise BadRequest(f"the .npy header declares {size:,} bytes of data but the body holds {len(body) - offset:,}; "
                         "send the whole output of np.save")
    array = np.frombuffer(body, np.uint8, size, offset)
    return array.reshape(shape[::-1]).transpose() if fortran_order else array.reshape(shape)


def _npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype[Any], int]:
    """Shape, Fortran order, dtype and data offset of an ``.npy`` body by NumPy's header parser (which never
    unpickles); a header it cannot read is 400."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]}; np.save writes 1.0 for uint8 arrays")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise BadRequest(f"cannot read the .npy body ({first_line(exc)}); send np.save of a uint8 array") from exc
    return shape, fortran_order, dtype, stream.tell()


def _prepare_npy(array: np.ndarray, hw: tuple[int, int], box: Crop | None) -> np.ndarray:
    try:
        return stack_frames(array, hw[0], hw[1], box)
    except FoldedCNNsError as exc:  # a crop outside the images
        raise BadRequest(first_line(exc, 300)) from exc


@functools.cache
def _quiet_pillow_bomb_warning() -> None:
    """The server's limits are far below Pillow's, so its DecompressionBombWarning only repeats, once per size, in
    the log what the server already refused (413)."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class PlainPng:
    """A plain PNG's bytes and the size its header declares (:func:`~foldedcnns.data.imageio.plain_png_size`):
    opened without Pillow, decoded by OpenCV (or by Pillow, which says why, when OpenCV cannot)."""

    __slots__ = ("data", "height", "width")

    def __init__(self, data: bytes, size: tuple[int, int]) -> None:
        self.data, (self.width, self.height) = data, size

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def close(self) -> None:
        """Nothing to release (as :meth:`PIL.Image.Image.close`)."""

    def __enter__(self) -> PlainPng:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


Opened = Image.Image | PlainPng


def _open(data: bytes, where: str) -> Opened:
    size = plain_png_size(data)
    return PlainPng(data, size) if size is not None else _open_pillow(data, where)


def _open_pillow(data: bytes, where: str) -> Image.Image:
    _quiet_pillow_bomb_warning()
    try:
        return open_image(io.BytesIO(data))
    except ImageTooLarge as exc:
        raise RequestTooLarge(f"{where} declares more pixels than Pillow decodes; send smaller images") from exc
    except DataError as exc:
        raise _undecodable(exc, where) from exc


def _undecodable(exc: DataError, where: str) -> BadRequest:
    reason = first_line(exc.__cause__) if exc.__cause__ is not None else first_line(exc)
    reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", reason)
    return BadRequest(f"cannot decode {where} ({reason}); send PNG, JPEG or another format Pillow reads")


def open_parts(parts: Sequence[bytes], limits: PixelLimits, box: Crop | None = None) -> list[Opened]:
    """Open every part reading its header only, and check the declared sizes (:func:`check_pixels`) before any
    part is decoded. CPU work (a little): run it off the loop."""
    images: list[Opened] = []
    try:
        for i, part in enumerate(parts):
            images.append(_open(part, where_in(i, len(parts))))
        check_pixels([img.size for img in images], limits, box)
    except BaseException:
        for img in images:
            img.close()
        raise
    return images


def decode_slices(pixels: Sequence[int], budget: int = DECODE_SLICE_PIXELS) -> list[tuple[int, int]]:
    """``(start, stop)`` runs of images whose declared pixels sum to at most ``budget`` (an image larger than
    ``budget`` alone): each run is one decode job, so others' jobs interleave with a large request's."""
    slices, start, total = [], 0, 0
    for i, p in enumerate(pixels):
        if i > start and total + p > budget:
            slices.append((start, i))
            start, total = i, 0
        total += p
    if pixels:
        slices.append((start, len(pixels)))
    return slices


def decode_parts(images: Sequence[Opened], first: int, count: int, hw: tuple[int, int],
                 box: Crop | None = None) -> np.ndarray:
    """Decode opened images (numbered from ``first`` of ``count`` in errors), crop, resize: uint8 ``(n, H, W, 3)``.
    CPU work: run it off the loop."""
    out = np.empty((len(images), hw[0], hw[1], 3), np.uint8)
    crop = box.as_tuple() if box is not None else None
    for i, img in enumerate(images):
        where = where_in(first + i, count)
        frame = decode_plain_png(img.data, crop) if isinstance(img, PlainPng) else None
        if frame is None:  # not a plain PNG, or one OpenCV could not decode: Pillow's, which says why
            frame = _decode_pillow(_open_pillow(img.data, where) if isinstance(img, PlainPng) else img, crop, where)
        out[i] = prepare_frame(frame, hw[0], hw[1], where=where)
    return out


def _decode_pillow(img: Image.Image, crop: tuple[int, int, int, int] | None, where: str) -> np.ndarray:
    try:
        return decode_image(img, crop, where)
    except DataError as exc:
        raise _undecodable(exc, where) from exc
