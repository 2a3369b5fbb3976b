"""Images are opened header first, and only raster formats Pillow decodes itself are opened at all; a plain PNG
is sized from its header and decoded by OpenCV to the pixels Pillow gives."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from foldedcnns.data import imageio
from foldedcnns.data.imageio import IMAGE_FORMATS, decode_image, decode_plain_png, open_image, plain_png_size
from foldedcnns.errors import DataError


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_raster_formats_open_header_first(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5)).save(buffer, fmt)
    buffer.seek(0)
    with open_image(buffer) as img:
        assert img.size == (7, 5)


def test_a_postscript_image_is_refused_not_handed_to_ghostscript():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "EPS")
    buffer.seek(0)
    with pytest.raises(DataError, match="cannot decode image"):
        open_image(buffer)


# Plain PNGs: their size from the header alone, their pixels by OpenCV, the same as Pillow's

def _png(array, mode, **save):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG", **save)
    return buffer.getvalue()


def _pillow_pixels(data, box=None):
    with open_image(io.BytesIO(data)) as img:
        return decode_image(img, box)


def _chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


RNG = np.random.default_rng(7)
PLAIN = {"rgb": _png(RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8), "RGB"),
         "rgba": _png(RNG.integers(0, 256, (7, 9, 4), dtype=np.uint8), "RGBA"),
         "grey": _png(RNG.integers(0, 256, (7, 9), dtype=np.uint8), "L"),
         "interlaced": _png(RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8), "RGB", optimize=False)}


@pytest.mark.parametrize("name", sorted(PLAIN))
@pytest.mark.parametrize("box", [None, (2, 1, 4, 3)])
def test_a_plain_png_decodes_to_pillows_pixels(name, box):
    pytest.importorskip("cv2")
    data = PLAIN[name]
    assert plain_png_size(data) == (9, 7)
    fast = decode_plain_png(data, box)
    assert fast.shape == ((7, 9, 3) if box is None else (3, 4, 3))
    assert np.array_equal(fast, _pillow_pixels(data, box))


def test_png_size_comes_from_the_header_before_anything_is_decoded():
    pytest.importorskip("cv2")
    header = _png(np.zeros((2, 2, 3), np.uint8), "RGB")[:33]  # signature + IHDR of a 2x2 image...
    declared = bytearray(header)
    declared[16:24] = struct.pack(">II", 13000, 13000)  # ...declaring 13000x13000 (with its CRC fixed)
    declared[29:33] = struct.pack(">I", zlib.crc32(bytes(declared[12:29])))
    idat = _chunk(b"IDAT", zlib.compress(b"\0" * 7))  # far too little data for that size
    assert plain_png_size(bytes(declared) + idat + _chunk(b"IEND", b"")) == (13000, 13000)


def _with_chunk_before_pixels(data, chunk):
    return data[:33] + chunk + data[33:]


@pytest.mark.parametrize("what", ["palette", "grey+alpha", "16-bit", "gamma", "transparency", "bad crc", "truncated",
                                  "no png"])
def test_anything_but_a_plain_png_is_left_to_pillow(what):
    pytest.importorskip("cv2")
    rgb = PLAIN["rgb"]
    flipped = bytearray(rgb)
    flipped[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    sixteen = io.BytesIO()  # Pillow writes a uint16 array as a 16-bit grey PNG
    Image.fromarray(RNG.integers(0, 65535, (7, 9), dtype=np.uint16)).save(sixteen, "PNG")
    data = {"palette": lambda: _png(RNG.integers(0, 256, (7, 9), dtype=np.uint8), "P"),
            "grey+alpha": lambda: _png(RNG.integers(0, 256, (7, 9, 2), dtype=np.uint8), "LA"),
            "16-bit": sixteen.getvalue,
            "gamma": lambda: _with_chunk_before_pixels(rgb, _chunk(b"gAMA", struct.pack(">I", 45455))),
            "transparency": lambda: _with_chunk_before_pixels(rgb, _chunk(b"tRNS", b"\0\1\0\2\0\3")),
            "bad crc": lambda: bytes(flipped), "truncated": lambda: rgb[:-20],
            "no png": lambda: b"GIF89a" + rgb[6:]}[what]()
    assert plain_png_size(data) is None


def test_without_opencv_every_png_goes_through_pillow(monkeypatch):
    monkeypatch.setattr(imageio, "_opencv", lambda: None)
    assert plain_png_size(PLAIN["rgb"]) is None
