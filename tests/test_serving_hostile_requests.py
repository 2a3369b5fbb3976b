"""Hostile requests (issue 25, hostile cases 1, 2, 3 and 6): a request's cost is bounded before any decoding.

In process: the shared request path (:func:`foldedcnns.serving.decode.decode_request`) refuses a
decompression bomb, bomb parts, an over-budget request, a lying ``.npy`` header, a request the queue has
no room for and one past its deadline, each before a pixel is decoded (the decoder is replaced by one
that fails the test). End to end, a real ``foldedcnns serve`` on loopback (helpers shared with
``benchmarks/serve_hostile.py``): the 13000x13000 1-bit PNG gets 413 without growing the server's
memory, a normal request under two bombs is answered at once, a 10^12-element ``.npy`` header gets one
line and no traceback, a full queue answers 503 from the headers alone, a late request 504 undecoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_hostile import (  # benchmarks/serve_hostile.py: the same hostile bodies and server helpers
    NPY_10_12,
    Server,
    bomb_png,
    multipart,
    normal_png,
    npy_header,
    peak_rss_growth,
    png_bytes,
    raw_post,
    serving,
    under_bombs,
)
from serve_process import npy_bytes, one_chunk

from foldedcnns.data.crop import Crop
from foldedcnns.data.imageio import read_image
from foldedcnns.errors import ConfigError
from foldedcnns.inference.preprocess import stack_frames
from foldedcnns.serving import decode, limits
from foldedcnns.serving.decode import decode_request, decode_slices
from foldedcnns.serving.errors import BadRequest, DeadlineExceeded, QueueFull, Reply, RequestTooLarge
from foldedcnns.serving.limits import MAX_IMAGE_PIXELS, MIN_IMAGE_PIXELS, RequestBudget, pixel_limits

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

TASK = "lol/goldnumber-fraction"
HW = (22, 52)
MB = 2**20


npy, chunks = npy_bytes, one_chunk  # benchmarks/serve_process.py: a request body and its stream


def run(body: bytes, kind: str = "image/png", query: dict[str, str] | None = None, **kw: object) -> np.ndarray:
    """``decode_request`` of one body in process (the default budget: a 16 MB body limit)."""
    from starlette.datastructures import Headers  # case-insensitive, as both servers pass them

    return asyncio.run(decode_request(Headers({"content-type": kind}), chunks(body), query or {}, HW,
                                      **kw))


def png_header(width: int, height: int, depth: int = 1, colour: int = 0, pixels: bytes = b"") -> bytes:
    """A PNG of one IHDR declaring ``width`` x ``height`` (1-bit grey unless said), ``pixels`` compressed as its
    data (none by default), every CRC right."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pixel decoded fails the test."""
    def refuse(*args: object, **kw: object) -> None:
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(decode, "decode_image", refuse)
    monkeypatch.setattr(decode, "decode_plain_png", refuse)  # OpenCV's path for plain PNGs


def test_the_pixel_limits_follow_the_model_and_crop_between_a_4k_and_an_8k_frame():
    assert pixel_limits(HW) == limits.PixelLimits(MIN_IMAGE_PIXELS, limits.REQUEST_PIXEL_FACTOR * MIN_IMAGE_PIXELS)
    assert pixel_limits(HW, Crop(0, 0, 52, 22)).image == MIN_IMAGE_PIXELS
    assert pixel_limits(HW, Crop(100, 0, 1900, 2000)).image == limits.IMAGE_PIXEL_FACTOR * 2000 * 2000
    assert pixel_limits(HW, Crop(0, 0, 20000, 20000)).image == MAX_IMAGE_PIXELS  # a crop cannot lift the ceiling
    assert pixel_limits((3000, 3000)).image == MAX_IMAGE_PIXELS


def test_a_servers_own_pixel_budget_replaces_the_derived_limits():
    assert pixel_limits(HW, budget=RequestBudget(image_pixels=5000)) == limits.PixelLimits(5000, 4 * 5000)
    assert pixel_limits(HW, Crop(0, 0, 20000, 20000), RequestBudget(request_pixels=9000)) == limits.PixelLimits(
        MAX_IMAGE_PIXELS, 9000)
    with pytest.raises(ConfigError, match="--max-image-pixels must be a positive number"):
        RequestBudget(image_pixels=0)
    with pytest.raises(ConfigError, match="--max-body-mb must be > 0"):
        RequestBudget(max_body_mb=0)


def test_a_request_past_the_servers_pixel_budget_is_refused_from_its_header(no_decoding):
    with pytest.raises(RequestTooLarge, match=r"the image \(52x22\) declares 1,144 pixels"):
        run(normal_png(), budget=RequestBudget(image_pixels=1000))
    with pytest.raises(RequestTooLarge, match=r"the request \(3 images\) declares 3,432 pixels"):
        run(npy(np.zeros((3, 22, 52, 3), np.uint8)), "application/x-npy", budget=RequestBudget(request_pixels=3000))


def test_a_bomb_bomb_parts_and_an_over_budget_request_are_refused_from_their_headers(no_decoding):
    bomb = bomb_png(13000)
    assert len(bomb) < 32_000
    with pytest.raises(RequestTooLarge, match=r"the image \(13000x13000\) declares 169,000,000 pixels"):
        run(bomb)
    body, kind = multipart([normal_png(), bomb, bomb, bomb])
    with pytest.raises(RequestTooLarge, match=r"image 1 of 4 \(13000x13000\)"):
        run(body, kind)
    frame_4k = png_bytes(Image.new("1", (3840, 2160), 0))  # each within the per-image limit...
    body, kind = multipart([frame_4k] * (limits.REQUEST_PIXEL_FACTOR + 1))  # ...but not all of them
    with pytest.raises(RequestTooLarge, match=r"the request \(5 images\) declares 41,472,000 pixels"):
        run(body, kind)
    with pytest.raises(RequestTooLarge, match=r"the image \(13000x13000\) declares"):
        run(png_header(13000, 13000, 8, 2))  # an 8-bit RGB one: sized from its header alone (OpenCV's path)
    with pytest.raises(RequestTooLarge, match="the image declares more pixels than Pillow decodes"):
        run(png_header(20000, 20000))  # past Pillow's own bomb limit: refused by Image.open itself
    with pytest.raises(BadRequest, match=r"crop 0,0,60,10 does not fit in the 52x22 frames of image 1 of 2"):
        run(*multipart([png_bytes(Image.new("RGB", (80, 30))), normal_png()]), query={"crop": "0,0,60,10"})
    with pytest.raises(BadRequest, match=r"cannot decode image 1 of 2"):
        run(*multipart([normal_png(), b"not an image"]))


def test_a_plain_png_opencv_cannot_decode_is_a_400_with_pillows_reason():
    pytest.importorskip("cv2")
    broken = png_header(9, 7, 8, 2, pixels=b"\x07" * 50)  # every CRC right, the rows' filter bytes wrong
    with pytest.raises(BadRequest, match=r"cannot decode the image \("):
        run(broken)


@pytest.mark.parametrize(("body", "error", "message"), [
    (npy_header(NPY_10_12), RequestTooLarge, "the request (333,334 images) declares 333,334,000,000 pixels"),
    (npy_header((1, 20000, 20000, 3)), RequestTooLarge, "each .npy image (20000x20000) declares"),
    (npy_header((4, 22, 52, 3)) + b"x" * 10, BadRequest, "declares 13,728 bytes of data but the body holds 10"),
    (npy_header((2, -1, 5, 3)), BadRequest, "must be uint8 (N, H, W, 3)"),
    (npy_header((0, 22, 52, 3)), BadRequest, "holds no images"),
    (npy_header((2, 0, 5, 3)), BadRequest, "images are empty"),
    (npy_header((2, 5, 5, 3), "<f4") + bytes(600), BadRequest, "got float32"),
    (npy_header((1,), "|O") + b"\x80\x04N.", BadRequest, "got object"),  # a pickle: never loaded
    (b"\x93NUMPY\x03\x00" + bytes(64), BadRequest, "format version 3.0"),
    (b"\x93NUMPY garbage", BadRequest, "cannot read the .npy body"),
])
def test_npy_headers_are_checked_before_anything_is_allocated(body, error, message):
    with pytest.raises(error) as caught:
        run(body, "application/x-npy")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_npy_arrays_in_either_order_give_their_images():
    images = np.random.default_rng(0).integers(0, 256, (3, 30, 60, 3), dtype=np.uint8)
    want = stack_frames(images, *HW, Crop(2, 3, 52, 22))
    assert np.array_equal(run(npy(np.asfortranarray(images)), "application/x-npy", {"crop": "2,3,52,22"}), want)
    assert np.array_equal(run(npy(images[0]), "application/x-npy", {"crop": "2,3,52,22"}), want[:1])
    assert decode._NPY_PLAIN_HEADER.match(npy(images))  # np.save's C-order header: read without NumPy's parser
    assert np.array_equal(run(npy(images), "application/x-npy", {"crop": "2,3,52,22"}), want)
    assert not decode._NPY_PLAIN_HEADER.match(npy(np.asfortranarray(images)))  # NumPy's parser reads the others


def test_parts_decode_to_what_predict_prepares(tmp_path: Path):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8))
    parts = [rgb, rgb.quantize(16), rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("1")]
    paths = []
    for i, image in enumerate(parts):
        image.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    want = stack_frames([read_image(p) for p in paths], *HW, Crop(5, 7, 60, 30))
    body, kind = multipart([p.read_bytes() for p in paths])
    assert np.array_equal(run(body, kind, {"crop": "5,7,60,30"}), want)


def test_admission_and_the_deadline_come_before_decoding(no_decoding):
    seen: list[int] = []

    def admit(images: int) -> None:
        seen.append(images)
        raise QueueFull("queue full (8 of 8 images waiting); retry later")

    body, kind = multipart([normal_png()] * 3)
    for payload, media in ((body, kind), (npy(np.zeros((5, 22, 52, 3), np.uint8)), "application/x-npy"),
                           (normal_png(), "image/png")):
        with pytest.raises(QueueFull):
            run(payload, media, admit=admit)
    assert seen == [3, 5, 1]
    with pytest.raises(DeadlineExceeded, match=r"deadline passed \d+ ms before its images were decoded; dropped"):
        run(normal_png(), deadline=-1.0)  # the event loop's time() is far past it
    with pytest.raises(DeadlineExceeded):
        run(body, kind, deadline=-1.0)


def test_decode_slices_bound_the_pixels_of_one_decode_job():
    assert decode_slices([100] * 5, budget=250) == [(0, 2), (2, 4), (4, 5)]
    assert decode_slices([10, 1000, 10, 10], budget=250) == [(0, 1), (1, 2), (2, 4)]
    assert decode_slices([]) == []


def test_a_full_queue_refuses_from_the_headers_without_reading_the_body():
    from foldedcnns.serving import Service
    from foldedcnns.serving.batcher import DynamicBatcher
    from foldedcnns.serving.metrics import ServingMetrics

    class FullQueue:  # the batcher's own admission rule over a queue holding 8 of 8 images
        request_timeout, _closing, _queued, max_queue_images = None, False, 8, 8
        input_hw = HW
        check_room = DynamicBatcher.check_room

        async def close(self) -> None:
            pass

    read = []

    async def body() -> AsyncIterator[bytes]:
        read.append(True)
        yield normal_png()

    async def main() -> Reply:
        service = Service(FullQueue(), FullQueue(), ServingMetrics())  # type: ignore[arg-type]
        try:
            return await service.predict({"content-type": "image/png"}, body(), {})
        finally:
            await service.stop()

    reply = asyncio.run(main())
    assert reply.status == 503 and reply.headers == {"Retry-After": "1"} and "queue full (8 of 8" in reply.body["error"]
    assert read == []


# -- end to end: a real server on loopback -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_checkpoint) -> Iterator[Server]:
    with serving(tiny_checkpoint(4, task=TASK), fail=pytest.fail) as running:
        for _ in range(3):  # warm: the first requests pay for lazy imports, the decode threads, the first batch
            assert raw_post(running.url, normal_png())[0] == 200
        yield running


def one_line_error(response: tuple[int, dict[str, str], bytes]) -> str:
    status, _, body = response
    answer = json.loads(body)
    assert answer["status"] == status and "\n" not in answer["error"]
    return answer["error"]


@pytest.mark.slow  # starts a real server process
def test_a_bomb_and_four_bomb_parts_get_413_without_growing_the_server(server):
    bomb = bomb_png(13000)
    body, kind = multipart([bomb] * 4)
    for payload, media in ((bomb, "image/png"), (body, kind)):
        with peak_rss_growth(server.proc.pid) as rss:
            start = time.perf_counter()
            response = raw_post(server.url, payload, media, timeout=60)
            seconds = time.perf_counter() - start
        assert response[0] == 413, response
        assert "13000x13000" in one_line_error(response)
        assert rss["growth"] < 50 * MB, rss  # a full decode of one bomb takes over 2 GB
        assert seconds < 1.0  # refused from its header; a full decode takes seconds (the issue: 6.4 s)


@pytest.mark.slow  # starts a real server process
def test_a_normal_request_under_two_bombs_is_answered_at_once(server):
    seconds, status, bomb_statuses = under_bombs(server.url, bomb_png(13000), normal_png())
    assert status == 200 and bomb_statuses == [413, 413]
    assert seconds < 1.0  # the bombs no longer hold the decode threads (the issue: 6.3 s)


@pytest.mark.slow  # starts a real server process
def test_an_npy_header_of_10_12_elements_gets_one_line_and_no_traceback(server):
    response = raw_post(server.url, npy_header(NPY_10_12), "application/x-npy", timeout=60)
    assert response[0] in (400, 413) and "declares" in one_line_error(response)
    time.sleep(0.2)  # let the server's log reach us
    log = server.output()
    assert "Traceback" not in log and "MemoryError" not in log, log


@pytest.mark.slow  # starts a real server process
def test_a_request_past_its_deadline_gets_504_without_decoding(server):
    truncated = normal_png()[:-30]  # a valid header, then a body that would fail to decode (400)
    assert raw_post(server.url, truncated, timeout=30)[0] == 400
    response = raw_post(server.url, truncated, headers={"X-Request-Timeout-Ms": "100"}, pause_s=0.4, timeout=30)
    assert response[0] == 504 and "dropped without decoding" in one_line_error(response)


@pytest.mark.slow  # starts a real server process
def test_a_full_queue_answers_503_from_the_headers_with_the_body_unread(tiny_checkpoint):
    httpx = pytest.importorskip("httpx")
    # D = 60 s and N = 64 > Q = 8: eight queued images stay queued, and the queue is full.
    with serving(tiny_checkpoint(4, task=TASK), "--max-queue-images", "8", "--max-batch-images", "64",
                 "--max-delay-ms", "60000", fail=pytest.fail) as full:
        filler = threading.Thread(target=lambda: _quietly(raw_post, full.url, npy(np.zeros((8, 22, 52, 3), np.uint8)),
                                                          "application/x-npy", timeout=20), daemon=True)
        filler.start()
        for _ in range(200):
            if httpx.get(f"{full.url}/readyz", timeout=10).json().get("queue_images") == 8:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the eight images were not queued")
        start = time.perf_counter()
        response = raw_post(full.url, b"", content_length=10_000_000, timeout=10)  # the headers, no body
        seconds = time.perf_counter() - start
    filler.join(timeout=30)
    assert response[0] == 503 and response[1]["retry-after"] == "1", response
    assert "queue full (8 of 8 images waiting)" in one_line_error(response)
    assert seconds < 5.0  # answered without waiting for the 10 MB that never come


def _quietly(call, *args, **kw) -> None:
    with contextlib.suppress(OSError):  # the filler's answer may be cut by the server's stop
        call(*args, **kw)


@pytest.mark.slow  # starts a real server process
def test_serve_takes_its_pixel_limits_from_the_command_line(tiny_checkpoint):
    with serving(tiny_checkpoint(4, task=TASK), "--max-request-pixels", "2000", fail=pytest.fail) as small:
        assert raw_post(small.url, normal_png())[0] == 200  # 52 x 22 = 1,144 pixels
        response = raw_post(small.url, *multipart([normal_png()] * 2))
    assert response[0] == 413 and "declares 2,288 pixels" in one_line_error(response)
