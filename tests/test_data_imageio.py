"""Images are opened header first, and only raster formats Pillow decodes itself are opened at all."""

import io

import pytest
from PIL import Image

from foldedcnns.data.imageio import IMAGE_FORMATS, open_image
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
