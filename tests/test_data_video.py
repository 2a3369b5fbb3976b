"""Sequential video decoding on short H.264 videos made by the tests."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is not installed; pip install 'foldedcnns[video]' to run the video tests")

import av

from foldedcnns.data import video as video_module
from foldedcnns.data.video import DecodeStats, iter_frames, write_video
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


# -- joined segments, damaged packets, pipes ---------------------------------------------------------------


def write_levels(path: Path, count: int, codec: str = "libx264") -> Path:
    """A video whose frame i is flat grey ``STEP * (i % 30)`` (read back with :func:`grey`)."""
    write_video(path, (np.full((HEIGHT, WIDTH, 3), STEP * (i % 30), np.uint8) for i in range(count)), codec=codec)
    return path


@pytest.mark.parametrize("codec", ["libx264", "mpeg2video"])
def test_mpegts_segments_joined_with_cat_decode_whole(tmp_path: Path, codec: str) -> None:
    segment = write_levels(tmp_path / "a.ts", 90, codec)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(segment.read_bytes() * 2)  # cat a.ts a.ts > joined.ts
    with av.open(str(joined)) as container:  # PyAV's own loop, which decodes on past the seam as ffmpeg does
        reference = sum(1 for _ in container.decode(video=0))
    stats = DecodeStats()
    frames = list(iter_frames(joined, stats=stats))
    assert len(frames) == reference == 180
    assert [i for i, _ in frames] == list(range(180))
    assert [grey(f) for _, f in frames] == [i % 30 for i in range(90)] * 2  # both halves, in order
    assert stats.damaged_packets >= 1  # the seam: the demuxer flags the packet cut by the second header
    single = DecodeStats()
    assert len(list(iter_frames(segment, stats=single))) == 90 and single.damaged_packets == 0


class FakePacket:
    def __init__(self, frames: list[str], corrupt: bool = False, refused: bool = False, size: int = 100) -> None:
        self.frames, self.is_corrupt, self.refused, self.size = frames, corrupt, refused, size

    def decode(self) -> list[str]:
        if self.refused:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return self.frames


class FakeStream:
    class codec_context:  # PyAV's attribute name
        @staticmethod
        def decode(packet: None) -> list[str]:
            return ["held in the decoder"]


class FakeContainer:
    def __init__(self, packets: list[FakePacket]) -> None:
        self.packets = [*packets, FakePacket([], size=0)]  # the demuxer ends with an empty packet

    def demux(self, stream: FakeStream) -> list[FakePacket]:
        return self.packets


def decode_fake(packets: list[FakePacket]) -> tuple[list[str], int, bool]:
    frames: list[str] = []
    stats = DecodeStats()
    try:
        for frame in video_module.pyav_frames(FakeContainer(packets).demux(FakeStream()), FakeStream(), stats):
            frames.append(frame)
    except video_module.CutStream:
        return frames, stats.damaged_packets, True
    return frames, stats.damaged_packets, False


def test_damage_mid_stream_is_skipped_and_counted_damage_at_the_end_is_a_cut() -> None:
    good, corrupt, refused = FakePacket, lambda f: FakePacket(f, corrupt=True), FakePacket([], refused=True)
    # mid-stream: a refused packet is skipped, a corrupt-flagged one followed by others is decoded
    assert decode_fake([good(["a"]), refused, corrupt(["b"]), good(["c"])]) == (
        ["a", "b", "c", "held in the decoder"], 2, False)
    # at the end: a corrupt-flagged last packet is a cut file; it is not decoded, the decoder is drained first
    assert decode_fake([good(["a"]), corrupt(["half a frame"])]) == (["a", "held in the decoder"], 1, True)
    assert decode_fake([good(["a"]), refused]) == (["a", "held in the decoder"], 1, True)


def feed(fd: int, data: bytes) -> threading.Thread:
    """Write ``data`` into the pipe ``fd`` from a thread (ends when the reader closes its end)."""

    def run() -> None:
        with contextlib.suppress(BrokenPipeError), open(fd, "wb") as pipe:
            pipe.write(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_video_read_from_a_pipe(tmp_path: Path) -> None:
    segment = write_levels(tmp_path / "a.ts", 40)
    read_end, write_end = os.pipe()
    writer = feed(write_end, segment.read_bytes())
    with open(read_end, "rb") as pipe:
        frames = list(iter_frames(pipe, size=(12, 16)))
    writer.join(10)
    assert not writer.is_alive()
    assert [grey(f) for _, f in frames] == [i % 30 for i in range(40)]
    # an MP4 whose index follows its frames needs to seek back: one error that says what a pipe can carry
    rng = np.random.default_rng(0)
    mp4 = tmp_path / "noise.mp4"
    write_video(mp4, (rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8) for _ in range(40)))
    read_end, write_end = os.pipe()
    writer = feed(write_end, mp4.read_bytes())
    with open(read_end, "rb") as pipe, pytest.raises(DataError, match=r"<pipe> .*a pipe can carry MPEG-TS"):
        list(iter_frames(pipe))
    writer.join(10)
    assert not writer.is_alive()


def test_a_device_is_neither_a_video_file_nor_a_pipe() -> None:
    with pytest.raises(DataError, match=r"/dev/null is not a file or a pipe"):
        iter_frames("/dev/null")
