"""Batched image transforms that run on the training device.

Every function takes a batch ``(N, C, H, W)`` on any device and returns a batch on the same device.
Random transforms draw all their numbers from the ``torch.Generator`` they are given (on the
generator's device, then moved), so a seeded generator gives the same result on every run and
every device. The CIFAR recipe of the original is random crop 32 with padding 4 and a horizontal
flip (on uint8, so the padding is black), then normalisation with :data:`CIFAR_MEAN` and
:data:`CIFAR_STD` (:func:`foldedcnns.data.model_input.to_model_input`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from foldedcnns.errors import ShapeError

# The original's CIFAR normalisation (its std values are the widely copied ones, not the true std).
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2023, 0.1994, 0.2010)
CIFAR_CROP = 32
CIFAR_PADDING = 4
UINT8_MAX = 255.0


def _check_batch(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ShapeError(f"{what} expects a batch (N, C, H, W), got shape {tuple(x.shape)}")


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(int(v) < 1 for v in pair):
        raise ShapeError(f"{what} must be a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


def to_float(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` in [0, 255] -> ``float32`` in [0, 1]; floating input is returned unchanged."""
    if x.is_floating_point():
        return x
    if x.dtype != torch.uint8:
        raise ShapeError(f"to_float expects uint8 or floating images, got {x.dtype}")
    return x.to(torch.float32).div_(UINT8_MAX)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel for a float batch (N, C, H, W); len(mean) == C."""
    _check_batch(x, "normalize")
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ShapeError(f"normalize got {len(mean)} means and {len(std)} stds for {x.shape[1]} channels")
    x = to_float(x)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def _draw_int(high: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` integers in [0, high), drawn on the generator's device and moved to ``device``."""
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device)


def random_crop(x: torch.Tensor, size: int | Sequence[int], padding: int = 0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad every side by ``padding`` zeros, then crop ``size`` at a random place per image.

    Shapes: ``(N, C, H, W) -> (N, C, h, w)``. Zero padding is black for ``uint8`` images, as in
    torchvision's ``RandomCrop(32, padding=4)`` applied before normalisation.
    """
    _check_batch(x, "random_crop")
    h, w = _pair(size, "crop size")
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    n, c, hp, wp = x.shape
    if h > hp or w > wp:
        raise ShapeError(f"crop {h}x{w} is larger than the padded image {hp}x{wp}")
    generator = generator if generator is not None else torch.default_generator
    top = _draw_int(hp - h + 1, n, generator, x.device)
    left = _draw_int(wp - w + 1, n, generator, x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, wp)
    x = x.gather(2, rows)
    cols = (left[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return x.gather(3, cols)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(x, "random_hflip")
    generator = generator if generator is not None else torch.default_generator
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def _nearest_index(src: int, dst: int, device: torch.device) -> torch.Tensor:
    # floor(i * src / dst) in exact integers: OpenCV's INTER_NEAREST, as in foldedcnns.data.imageio
    return torch.div(torch.arange(dst, device=device) * src, dst, rounding_mode="floor")


def resize(x: torch.Tensor, size: int | Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """Resize a batch to ``size = (height, width)``; keeps the dtype.

    ``nearest`` picks source pixel ``floor(i * src / dst)`` (OpenCV's rule, the original's choice for
    NoScope frames); ``bilinear`` interpolates with antialiasing when shrinking. ``uint8`` input is
    rounded back to ``uint8``.
    """
    _check_batch(x, "resize")
    h, w = _pair(size, "resize size")
    if (h, w) == tuple(x.shape[-2:]):
        return x
    if mode == "nearest":
        rows = _nearest_index(x.shape[2], h, x.device)
        cols = _nearest_index(x.shape[3], w, x.device)
        return x.index_select(2, rows).index_select(3, cols)
    if mode == "bilinear":
        out = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False,
                            antialias=h < x.shape[2] or w < x.shape[3])
        if x.dtype == torch.uint8:
            return out.round_().clamp_(0, UINT8_MAX).to(torch.uint8)
        return out.to(x.dtype)
    raise ShapeError(f"unknown resize mode {mode!r}; use 'nearest' or 'bilinear'")
