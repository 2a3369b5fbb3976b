"""Request bodies to model-ready images: ``image/*``, ``multipart/form-data`` and ``application/x-npy``.

* ``image/png``, ``image/jpeg``, ... (any ``image/*`` Pillow reads): one image;
* ``multipart/form-data``: one image per file part, in the parts' order; a text field ``crop`` is the
  crop (as the ``crop`` query parameter);
* ``application/x-npy``: a NumPy ``.npy`` array, uint8 ``(N, H, W, 3)`` (or one ``(H, W, 3)`` image),
  for high-rate clients that skip the PNG round trip.

Every image is decoded by :func:`foldedcnns.data.imageio.read_image`, then cropped and resized by
:func:`foldedcnns.inference.preprocess.stack_frames`, exactly as ``foldedcnns predict`` prepares files.
Problems are :class:`ServingError` with the HTTP status (400, 413, 415) and a one-line message.
:func:`decode_request` is the whole path from a request to images, shared by the native server and the
Ray Serve replica.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from foldedcnns.data.crop import Crop
from foldedcnns.data.imageio import read_image
from foldedcnns.errors import DataError, FoldedCNNsError, first_line
from foldedcnns.inference.preprocess import stack_frames
from foldedcnns.serving.errors import BadRequest, RequestTooLarge, ServingError, UnsupportedMediaType
from foldedcnns.serving.metrics import require

NPY = "application/x-npy"
MULTIPART = "multipart/form-data"
DEFAULT_MAX_BODY_MB = 16.0
MAX_PARTS = 4096
MEDIA_TYPES = "image/png, image/jpeg (any image/*), multipart/form-data or application/x-npy"


def body_limit(max_body_mb: float) -> int:
    """``--max-body-mb`` in bytes."""
    return int(max_body_mb * 1024 * 1024)


async def decode_request(headers: Mapping[str, str], chunks: AsyncIterator[bytes], query: Mapping[str, str],
                         hw: tuple[int, int], *, max_body: int, executor: Executor | None = None) -> np.ndarray:
    """The images of one ``POST /v1/predict`` as uint8 ``(N, H, W, 3)`` at ``hw``: media type checked (415),
    body read up to ``max_body`` bytes (413), a multipart body split into its file parts (its ``crop``
    field used unless the query has one), then decoded, cropped and resized on ``executor`` (None: the
    loop's default), off the event loop (400 for what cannot be decoded)."""
    kind = check_media_type(headers.get("content-type"))
    body = await read_body(chunks, max_body, headers.get("content-length"))
    crop = query.get("crop")
    payload: bytes | list[bytes] = body
    if kind == MULTIPART:
        payload, form_crop = await split_multipart(headers, body, max_body)
        crop = crop or form_crop
    return await asyncio.get_running_loop().run_in_executor(executor, decode_images, kind, payload, hw, crop)


def media_type(content_type: str | None) -> str:
    """``'Image/PNG; charset=x'`` -> ``'image/png'``; a missing header is ``''``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_media_type(content_type: str | None) -> str:
    kind = media_type(content_type)
    if not (kind.startswith("image/") or kind in (MULTIPART, NPY)):
        raise UnsupportedMediaType(f"unsupported media type {kind or '(none)'!r}; send {MEDIA_TYPES}")
    return kind


async def read_body(chunks: AsyncIterator[bytes], limit: int, content_length: str | None = None) -> bytes:
    """The request body, at most ``limit`` bytes (else 413 at once, without reading the rest)."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise RequestTooLarge(f"body of {int(content_length)} bytes exceeds the limit of {limit} bytes "
                              "(--max-body-mb); send fewer or smaller images per request")
    body, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"body exceeds the limit of {limit} bytes (--max-body-mb); send fewer or smaller "
                                  "images per request")
        body.append(chunk)
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


def decode_images(kind: str, payload: bytes | Sequence[bytes], hw: tuple[int, int],
                  crop: str | None = None) -> np.ndarray:
    """Decode, crop and resize a body (``kind`` from :func:`check_media_type`) into uint8 ``(N, H, W, 3)``.

    ``payload`` is the raw body, or the file parts of a multipart body. CPU work: run it off the loop.
    """
    try:
        box = Crop.parse(crop) if crop else None
        if kind == NPY:
            frames: Any = _load_npy(payload)
        else:
            parts = [payload] if isinstance(payload, (bytes, bytearray)) else list(payload)
            frames = [_decode(part, i, len(parts)) for i, part in enumerate(parts)]
        return stack_frames(frames, hw[0], hw[1], box)
    except ServingError:
        raise
    except FoldedCNNsError as exc:  # a bad crop (ConfigError), a crop outside an image (DataError/ConfigError)
        raise BadRequest(first_line(exc, 300)) from exc


def _decode(data: bytes, index: int, count: int) -> np.ndarray:
    where = "the image" if count == 1 else f"image {index} of {count}"
    try:
        return read_image(io.BytesIO(data))
    except DataError as exc:
        reason = first_line(exc.__cause__) if exc.__cause__ is not None else first_line(exc)
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", reason)
        raise BadRequest(f"cannot decode {where} ({reason}); send PNG, JPEG or another format Pillow reads"
                         ) from exc


def _load_npy(data: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadRequest(f"cannot read the .npy body ({first_line(exc)}); send np.save of a uint8 array") from exc
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim not in (3, 4) \
            or array.shape[-1] != 3:
        raise BadRequest(f"the .npy array must be uint8 (N, H, W, 3) or (H, W, 3), got "
                         f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}")
    array = array[None] if array.ndim == 3 else array
    if len(array) == 0:
        raise BadRequest("the .npy array holds no images")
    return array
