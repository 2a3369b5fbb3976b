"""What one request may cost, from its declared sizes: the per-image and per-request pixel limits and the body size.

Checked before any pixel is decoded or allocated (:mod:`foldedcnns.serving.decode`): each image's declared
width x height against a per-image limit, their sum against a per-request budget (:func:`pixel_limits`: a few
times the larger of the model's input and the crop's extent, never below a 4K frame nor above an 8K one,
unless the server's :class:`RequestBudget` sets them), and the crop against each image's declared size. Past
a limit: 413 (or 400) with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from foldedcnns.data.crop import Crop
from foldedcnns.errors import ConfigError, FoldedCNNsError, first_line
from foldedcnns.serving.errors import BadRequest, RequestTooLarge

DEFAULT_MAX_BODY_MB = 16.0

# What one request may decode, from the declared sizes (docs/serving.md, "Limits on what a request may cost").
MIN_IMAGE_PIXELS = 3840 * 2160   # the per-image limit is never below a 4K frame, whatever the model and crop
IMAGE_PIXEL_FACTOR = 4           # ...and else this many times the larger of the model's input and the crop's extent
MAX_IMAGE_PIXELS = 7680 * 4320   # ...and never above an 8K frame, whatever the crop asks for
REQUEST_PIXEL_FACTOR = 4         # all images of one request: at most this many images at the per-image limit


@dataclass(frozen=True)
class PixelLimits:
    """Declared pixels (width x height) one image (``image``) and all images of a request (``request``) may have."""

    image: int
    request: int


@dataclass(frozen=True)
class RequestBudget:
    """What one request may cost, as a server sets it: its body (``--max-body-mb``) and the declared pixels of
    one image and of all its images (``--max-image-pixels``, ``--max-request-pixels``; None: derived from the
    model and the crop, :func:`pixel_limits`)."""

    max_body_mb: float = DEFAULT_MAX_BODY_MB
    image_pixels: int | None = None
    request_pixels: int | None = None

    def __post_init__(self) -> None:
        if not self.max_body_mb > 0:
            raise ConfigError(f"--max-body-mb must be > 0, got {self.max_body_mb:g}")
        for flag, value in (("--max-image-pixels", self.image_pixels), ("--max-request-pixels", self.request_pixels)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be a positive number of pixels (width x height), got {value}")

    @property
    def max_body(self) -> int:
        """``--max-body-mb`` in bytes."""
        return int(self.max_body_mb * 1024 * 1024)


def pixel_limits(hw: tuple[int, int], box: Crop | None = None, budget: RequestBudget | None = None) -> PixelLimits:
    """The limits for a model of input ``hw = (height, width)`` and an optional crop: the per-image limit is
    :data:`IMAGE_PIXEL_FACTOR` times the larger of the model's input and the crop's extent (``(x + w) * (y + h)``,
    the smallest image the crop fits), clamped to [:data:`MIN_IMAGE_PIXELS`, :data:`MAX_IMAGE_PIXELS`]; a request
    may have :data:`REQUEST_PIXEL_FACTOR` such images in all. A ``budget`` value replaces its derived limit (a
    request's then defaults to :data:`REQUEST_PIXEL_FACTOR` times the given per-image one)."""
    budget = budget or RequestBudget()
    extent = (box.x + box.w) * (box.y + box.h) if box is not None else 0
    derived = min(MAX_IMAGE_PIXELS, max(MIN_IMAGE_PIXELS, IMAGE_PIXEL_FACTOR * max(hw[0] * hw[1], extent)))
    image = budget.image_pixels or derived
    return PixelLimits(image, budget.request_pixels or REQUEST_PIXEL_FACTOR * image)


def too_many(what: str, pixels: int, limit: int, per: str = "image") -> RequestTooLarge:
    return RequestTooLarge(f"{what} declares {pixels:,} pixels, over the limit of {limit:,} per {per}; send smaller "
                           "images (crop or resize them first) or fewer per request")


def check_fits(box: Crop | None, width: int, height: int, where: str) -> None:
    if box is not None:
        try:
            box.check_fits(width, height, where)
        except FoldedCNNsError as exc:
            raise BadRequest(first_line(exc, 300)) from exc


def check_pixels(sizes: Sequence[tuple[int, int]], limits: PixelLimits, box: Crop | None = None) -> None:
    """Declared ``(width, height)`` of each image of a request against ``limits`` (413) and the crop (400)."""
    count, total = len(sizes), 0
    for i, (width, height) in enumerate(sizes):
        where = where_in(i, count)
        if width * height > limits.image:
            raise too_many(f"{where} ({width}x{height})", width * height, limits.image)
        check_fits(box, width, height, where)
        total += width * height
    if total > limits.request:
        raise too_many(f"the request ({count} images)", total, limits.request, "request")


def where_in(index: int, count: int) -> str:
    """How an error names image ``index`` of a request of ``count``."""
    return "the image" if count == 1 else f"image {index} of {count}"
