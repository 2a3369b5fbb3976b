"""From a decoded video frame to a model's input: crop, nearest-neighbour resize, RGB.

A :class:`FrameSampler` is one view of a frame: a crop box and an output size. For the common
``yuv420p`` streams it samples the output pixels straight from the decoded Y/U/V planes and converts
only those pixels to RGB (BT.601, or BT.709 when the stream says so), so a 52x22 crop of a 1280x720
frame costs 1,144 conversions, not 921,600. Several samplers read the same decoded frame: one decode
serves every model that reads it (``foldedcnns scrape``). Resizing is nearest neighbour with OpenCV's
``INTER_NEAREST`` rule, as the original NoScope preparation did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foldedcnns.data.crop import Crop
from foldedcnns.data.imageio import nearest_indices

# Y'CbCr -> R'G'B' for 8-bit video: (Kr, Kb) of the matrix; limited range scales Y by 255/219, C by 255/224.
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
_AV_COLORSPACE_BT709 = 1  # AVColorSpace.AVCOL_SPC_BT709
_AV_RANGE_FULL = 2  # AVColorRange.AVCOL_RANGE_JPEG
_FAST_FORMATS = ("yuv420p", "yuvj420p")


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of sampled 8-bit planes ``y``, ``u``, ``v`` (each ``(H, W)``)."""
    kr, kb = _KR_KB[matrix]
    kg = 1.0 - kr - kb
    yf = y.astype(np.float32)
    cb = u.astype(np.float32) - 128.0
    cr = v.astype(np.float32) - 128.0
    if not full_range:
        yf = (yf - 16.0) * (255.0 / 219.0)
        cb *= 255.0 / 224.0
        cr *= 255.0 / 224.0
    r = yf + 2.0 * (1.0 - kr) * cr
    b = yf + 2.0 * (1.0 - kb) * cb
    g = yf - (2.0 * kb * (1.0 - kb) / kg) * cb - (2.0 * kr * (1.0 - kr) / kg) * cr
    rgb = np.stack((r, g, b), axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


class FrameSampler:
    """One view of decoded frames: ``crop`` (x, y, width, height) then a resize to ``size`` (height,
    width); either may be None. Index tables are built once per frame size; a crop that does not fit
    the frame is a one-line :class:`~foldedcnns.errors.ConfigError` naming ``path``. Picklable (worker processes)."""

    def __init__(self, size: tuple[int, int] | None, crop: Crop | tuple[int, int, int, int] | None,
                 path: str | Path = "the frame") -> None:
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.crop = None if crop is None else Crop.parse(tuple(int(v) for v in crop))  # type: ignore[arg-type]
        self.path = Path(path)
        self._tables: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size, "crop": self.crop, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["size"], state["crop"], state["path"])  # type: ignore[misc]

    def check_fits(self, width: int, height: int) -> None:
        """Raise the one-line error of a crop outside a ``width`` x ``height`` frame."""
        if self.crop is not None:
            self.crop.check_fits(width, height, self.path)

    def _indices(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        key = (height, width)
        if key not in self._tables:
            self.check_fits(width, height)
            x0, y0, w, h = self.crop if self.crop is not None else (0, 0, width, height)
            out_h, out_w = self.size if self.size is not None else (h, w)
            self._tables[key] = (y0 + nearest_indices(h, out_h), x0 + nearest_indices(w, out_w))
        return self._tables[key]

    def from_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """The view of an RGB ``(H, W, 3)`` frame."""
        if self.size is None and self.crop is None:
            return rgb
        rows, cols = self._indices(*rgb.shape[:2])
        return np.ascontiguousarray(rgb[rows[:, None], cols[None, :]])

    def from_av(self, frame: Any) -> np.ndarray:
        """The view of a PyAV ``VideoFrame``, sampled from its planes when it is yuv420p."""
        if self.size is None or frame.format.name not in _FAST_FORMATS:
            return self.from_rgb(frame.to_ndarray(format="rgb24"))
        rows, cols = self._indices(frame.height, frame.width)
        planes = frame.planes
        luma = np.frombuffer(planes[0], np.uint8).reshape(-1, planes[0].line_size)
        cb = np.frombuffer(planes[1], np.uint8).reshape(-1, planes[1].line_size)
        cr = np.frombuffer(planes[2], np.uint8).reshape(-1, planes[2].line_size)
        r2, c2 = (rows // 2)[:, None], (cols // 2)[None, :]
        matrix = "bt709" if frame.colorspace == _AV_COLORSPACE_BT709 else "bt601"
        full = frame.format.name == "yuvj420p" or frame.color_range == _AV_RANGE_FULL
        return yuv_to_rgb(luma[rows[:, None], cols[None, :]], cb[r2, c2], cr[r2, c2], matrix, full)
