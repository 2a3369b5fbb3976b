"""Decoding by keyframe segments in parallel processes gives exactly the frames of one sequential decode."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is not installed; pip install 'foldedcnns[video]' to run the video tests")

import av

from foldedcnns.data.frames import FrameSampler
from foldedcnns.data.video import DecodeOptions, DecodeStats, iter_views
from foldedcnns.data.video_segments import (
    Segment,
    decode_segment,
    default_decoders,
    index_video,
    parallel_views,
    plan_segments,
)
from foldedcnns.errors import DataError

WIDTH, HEIGHT = 96, 64


def moving(count: int, seed: int = 0) -> list[np.ndarray]:
    """Frames with moving blocks and noise (so P and B frames carry real changes)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        frame = base.copy()
        x, y = (3 * i) % (WIDTH - 16), (2 * i) % (HEIGHT - 16)
        frame[y:y + 16, x:x + 16] = (i * 7) % 255
        frames.append(frame)
    return frames


def encode(path: Path, frames: list[np.ndarray], *, keyframes: frozenset[int] = frozenset(),
           options: dict[str, str] | None = None, pts_ms: list[int] | None = None) -> Path:
    """H.264 with B-frames; ``keyframes`` forced as I frames; ``pts_ms`` gives a variable frame rate."""
    container = av.open(str(path), mode="w", options={"movflags": "faststart"} if path.suffix == ".mp4" else {})
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"bf": "3", **(options or {})}
    if pts_ms is not None:
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
        if i in keyframes:
            frame.pict_type = av.video.frame.PictureType.I
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


SAMPLERS = [FrameSampler((16, 24), (10, 8, 48, 32)), FrameSampler((8, 8), None)]


def sequential(path: Path) -> list[tuple[int, list[np.ndarray]]]:
    return list(iter_views(path, SAMPLERS))


def assert_same(expected: list, got: list) -> None:
    assert [k for k, _ in got] == [k for k, _ in expected]
    for (_, a), (_, b) in zip(expected, got, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    frames = moving(150)
    irregular = frozenset({0, 7, 19, 20, 61, 62, 100, 133})
    vfr = list(np.cumsum(np.random.default_rng(1).integers(10, 70, 150)) - 10)
    return {
        "bframes": encode(folder / "bframes.mp4", frames, options={"g": "24"}),
        "open_gop": encode(folder / "open.mkv", frames, options={"x264-params": "keyint=30:min-keyint=30:open-gop=1"}),
        "irregular": encode(folder / "irregular.mp4", frames, keyframes=irregular,
                            options={"x264-params": "keyint=1000:scenecut=0"}),
        "vfr": encode(folder / "vfr.mkv", frames, pts_ms=[int(v) for v in vfr], options={"g": "25"}),
        "mpegts": encode(folder / "clip.ts", frames, options={"g": "20"}),
        "short": encode(folder / "short.mp4", moving(9), options={"g": "24"}),
    }


@pytest.mark.parametrize("name", ["bframes", "open_gop", "irregular", "vfr", "mpegts", "short"])
def test_segments_give_the_frames_of_a_sequential_decode(clips: dict[str, Path], name: str) -> None:
    path = clips[name]
    expected = sequential(path)
    index = index_video(path)
    assert index.frames == len(expected) and index.timestamps_ok and not index.damaged
    for workers in (2, 3):
        segments = plan_segments(index, workers, min_frames=8)
        if name != "short":
            assert len(segments) > 1, "the clip must be cut, or the test shows nothing"
        assert segments[0].first == 0 and segments[-1].stop == index.frames
        assert all(a.stop == b.first and a.end_pts == b.start_pts for a, b in itertools.pairwise(segments))
        assert_same(expected, list(parallel_views(path, SAMPLERS, index, segments, workers)))


def test_open_gop_segments_keep_the_leading_b_frames(clips: dict[str, Path]) -> None:
    """A segment decodes past the next keyframe: the B-frames shown before it come out of its own range."""
    path = clips["open_gop"]
    index = index_video(path)
    segments = plan_segments(index, 4, min_frames=8)
    middle = segments[1]
    got = [k for k, _ in decode_segment(path, middle, SAMPLERS, index)]
    assert got == list(range(middle.first, middle.stop))


def test_irregular_keyframes_are_found_from_the_packets(clips: dict[str, Path]) -> None:
    index = index_video(clips["irregular"])
    assert {rank for rank, _ in index.keyframes} >= {0, 7, 19, 61, 100, 133}


def test_a_truncated_file_keeps_the_same_frames_and_error_as_one_decoder(clips: dict[str, Path], tmp_path) -> None:
    data = clips["bframes"].read_bytes()  # an MP4 with its index first: a cut file still opens
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) * 2 // 3])
    expected, error = [], None
    try:
        for item in iter_views(cut, SAMPLERS):
            expected.append(item)
    except DataError as exc:
        error = str(exc)
    assert error is not None and 0 < len(expected) < 150
    index = index_video(cut)
    segments = plan_segments(index, 2, min_frames=8)
    assert len(segments) > 1 and segments[-1].stop is None  # the damaged end is decoded sequentially
    got, stats = [], DecodeStats()
    with pytest.raises(DataError) as caught:
        for item in parallel_views(cut, SAMPLERS, index, segments, 2, stats=stats):
            got.append(item)
    assert str(caught.value) == error
    assert_same(expected, got)


def test_skipping_frames_keeps_true_indices(clips: dict[str, Path]) -> None:
    path = clips["bframes"]
    index = index_video(path)
    full = {k: v for k, v in sequential(path)}
    for frames in ("ref", "key"):
        segment = plan_segments(index, 1)[0]
        got = list(decode_segment(path, segment, SAMPLERS, index, options=DecodeOptions(frames), threads=None))
        keys = [k for k, _ in got]
        assert keys == sorted(keys) and 0 < len(keys) < len(full)
        assert np.array_equal(got[0][1][0], full[keys[0]][0])  # a keyframe decodes exactly
        if frames == "key":
            assert keys == sorted(rank for rank, _ in index.keyframes)


def test_default_decoders_follow_frame_size_and_cores() -> None:
    assert default_decoders(320, 240) == 1
    assert 1 <= default_decoders(1280, 720) <= 8


def test_a_segment_that_cannot_be_reached_is_one_line(clips: dict[str, Path]) -> None:
    path = clips["bframes"]
    index = index_video(path)
    with pytest.raises(DataError, match="decode it with --decoders 1"):
        list(decode_segment(path, Segment(24, 48, 10**9, None), SAMPLERS, index))
