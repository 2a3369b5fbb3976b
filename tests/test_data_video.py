"""Sequential video decoding on short H.264 videos made by the tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from foldedcnns.data.video import iter_frames, write_video
from foldedcnns.errors import ConfigError, DataError, ShapeError

# The conftest's tiny_video: frame i is (mostly) grey 8*i, so indices can be read back, with a red 16x16
# block at the top left.
FRAMES, HEIGHT, WIDTH = 30, 48, 64
STEP = 8  # grey level per frame index


def grey(frame: np.ndarray) -> int:
    """Frame index read back from the grey level of the bottom-right corner."""
    return round(float(frame[-4:, -4:].mean()) / STEP)


@pytest.fixture(scope="module")
def video(tiny_video: Callable[..., Path]) -> Path:
    return tiny_video(count=FRAMES)


@pytest.mark.parametrize("backend", ["pyav", "opencv"])
def test_every_frame_in_order(video: Path, backend: str) -> None:
    if backend == "opencv":
        pytest.importorskip("cv2")
    frames = list(iter_frames(video, backend=backend))
    assert [i for i, _ in frames] == list(range(FRAMES))
    assert all(f.shape == (HEIGHT, WIDTH, 3) and f.dtype == np.uint8 for _, f in frames)
    assert [grey(f) for _, f in frames] == list(range(FRAMES))
    red = frames[5][1][4, 4]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # RGB order, not BGR


def test_resize_start_end_and_true_indices(video: Path) -> None:
    frames = list(iter_frames(video, size=(12, 16), start=10, end=14))
    assert [i for i, _ in frames] == [10, 11, 12, 13]
    assert [grey(f) for _, f in frames] == [10, 11, 12, 13]
    assert frames[0][1].shape == (12, 16, 3)
    assert frames[0][1][0, 0, 0] > 200  # top-left block is still red after the nearest resize
    assert list(iter_frames(video, size=5, start=28))[-1][0] == FRAMES - 1  # end of stream ends cleanly


def test_one_decoder_thread_gives_the_same_frames(video: Path) -> None:
    default = list(iter_frames(video, size=(20, 30), backend="pyav"))
    single = list(iter_frames(video, size=(20, 30), backend="pyav", small_frame_threads=1))
    assert [i for i, _ in single] == [i for i, _ in default] == list(range(FRAMES))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(default, single, strict=True))


def test_backends_agree_after_resize(video: Path) -> None:
    pytest.importorskip("cv2")
    a = np.stack([f for _, f in iter_frames(video, size=(24, 32), backend="pyav")]).astype(int)
    b = np.stack([f for _, f in iter_frames(video, size=(24, 32), backend="opencv")]).astype(int)
    assert np.abs(a - b).mean() < 2.0


def test_crop_before_resize(video: Path) -> None:
    crops = list(iter_frames(video, crop=(0, 0, 16, 16), size=(4, 4), end=3))
    assert all(f.shape == (4, 4, 3) and f[..., 0].min() > 200 for _, f in crops)
    with pytest.raises(ConfigError, match="does not fit"):
        list(iter_frames(video, crop=(60, 0, 16, 16)))


def test_missing_and_unreadable_files_fail_before_any_frame(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.mp4 does not exist"):
        iter_frames(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 50)
    with pytest.raises(DataError, match=r"cannot open video .*junk\.mp4"):
        iter_frames(junk)
    with pytest.raises(ConfigError, match="end must be"):
        iter_frames(junk, start=5, end=5)


def test_truncated_video_yields_good_frames_then_fails(tmp_path: Path, tiny_video: Callable[..., Path]) -> None:
    streamable = tiny_video(count=FRAMES, faststart=True)  # index first, so the cut file still opens
    data = streamable.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    seen = []
    with pytest.raises(DataError, match=r"cut\.mp4 failed after frame (\d+).*truncated or corrupt"):
        for index, frame in iter_frames(cut, size=8):
            seen.append((index, grey(frame)))
    assert 5 < len(seen) < FRAMES
    assert [i for i, _ in seen] == list(range(len(seen)))


def test_start_past_the_end(video: Path) -> None:
    with pytest.raises(DataError, match=rf"has only {FRAMES} frames.*asked for \(100\)"):
        list(iter_frames(video, start=100))


def test_write_video_checks(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match="even height and width"):
        write_video(tmp_path / "odd.mp4", [np.zeros((5, 6, 3), np.uint8)])
    with pytest.raises(DataError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [])
    with pytest.raises(ConfigError, match="video format"):
        write_video(tmp_path / "clip.xyz", [np.zeros((4, 4, 3), np.uint8)])
    assert list(tmp_path.iterdir()) == []  # failed writes leave nothing behind
