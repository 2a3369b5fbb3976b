"""Sequential video decoding into RGB frames, and a small encoder for test and demo videos.

Frames are decoded in order from the first one; nothing seeks and nothing trusts the frame count in
the header (both are unreliable for H.264, see opencv#9053). Frame indices are therefore the true
positions in the stream of decoded frames. PyAV is used when installed; OpenCV is the fallback. Since
nothing seeks, a video may also come from a pipe: a FIFO path, or a binary file object such as
``sys.stdin.buffer`` (PyAV only).

Damage is handled as ffmpeg handles it: a packet the demuxer flags as corrupt or the decoder rejects
in the middle of the stream (the seam of MPEG-TS segments joined with ``cat``, a damaged block) is
skipped and counted in :class:`DecodeStats`, and decoding goes on. Only damage at the very end (a cut
file) ends the stream with an error, after every frame before it. OpenCV cannot tell damage from the
end of the stream.

Each decoded frame is cut into views by :class:`~foldedcnns.data.frames.FrameSampler` (crop, resize,
RGB from the planes): one decode serves every model that reads the frame (:func:`iter_views`).
Decoding a file by segments in parallel processes is :mod:`foldedcnns.data.video_segments`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from foldedcnns.data.crop import Crop
from foldedcnns.data.frames import FrameSampler
from foldedcnns.data.imageio import check_size
from foldedcnns.errors import ConfigError, DataError, ShapeError
from foldedcnns.utils.atomic import atomic_path

BACKENDS = ("auto", "pyav", "opencv")
DEFAULT_FPS = 30
CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".ts": "mpegts"}

SMALL_FRAME_PIXELS = 640 * 480  # up to here ``small_frame_threads`` applies (see iter_frames)
_PIPE_HINT = ("a pipe can carry MPEG-TS, or an MP4 with its index first (movflags=faststart); pass the file's path "
              "for other MP4s")


@dataclass
class DecodeStats:
    """What one decode met, filled in as it goes (PyAV backend). ``damaged_packets``: packets flagged corrupt by
    the demuxer or rejected by the decoder, skipped mid-stream as ffmpeg skips them."""

    damaged_packets: int = 0


def is_stream_path(path: str | os.PathLike[str]) -> bool:
    """True for a FIFO (a named pipe, or ``/dev/stdin`` fed by a pipe): it can be read once, in order."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False


def _check_input(path: Path) -> None:
    """A regular file or a FIFO (never opened here: opening a FIFO waits for its writer)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"video {path} does not exist; check the path") from None
    except OSError as exc:
        raise DataError(f"cannot use video {path} ({exc.strerror}); check the path and its permissions") from None
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise DataError(f"video {path} is not a file or a pipe; pass a video file, a FIFO or - for stdin")


def _pick_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown video backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend in ("auto", "pyav"):
        try:
            import av  # noqa: F401
            return "pyav"
        except ImportError:
            if backend == "pyav":
                raise DataError("PyAV is not installed; pip install 'foldedcnns[video]'") from None
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise DataError("reading videos needs PyAV or OpenCV; pip install 'foldedcnns[video]'") from None
    return "opencv"


DECODE_FRAMES = ("all", "ref", "key")
_SKIP_FRAME = {"all": "DEFAULT", "ref": "NONREF", "key": "NONKEY"}


@dataclass(frozen=True)
class DecodeOptions:
    """Fidelity levers of the decoder, for when decoding is the cost (docs/inference.md has the figures).

    ``frames``: ``all`` decodes every frame; ``ref`` only reference frames (FFmpeg's ``skip_frame`` NONREF:
    non-reference B-frames are not decoded); ``key`` only keyframes (NONKEY). ``fast`` skips the H.264/HEVC
    deblocking filter (``skip_loop_filter=all``: faster, slightly blockier frames whose errors drift until the
    next keyframe). The default decodes every frame at full fidelity.
    """

    frames: str = "all"
    fast: bool = False

    def __post_init__(self) -> None:
        if self.frames not in DECODE_FRAMES:
            raise ConfigError(f"--decode-frames must be one of {', '.join(DECODE_FRAMES)}, got {self.frames!r}")

    @property
    def every_frame(self) -> bool:
        """True when every frame is decoded (``frames == "all"``)."""
        return self.frames == "all"

    def apply(self, stream: Any) -> None:
        """Set these options on a PyAV video stream before its first packet is decoded."""
        if not self.every_frame:
            stream.codec_context.skip_frame = _SKIP_FRAME[self.frames]
        if self.fast:
            stream.codec_context.options = {"skip_loop_filter": "all"}


def iter_views(path: str | os.PathLike[str] | BinaryIO, samplers: Sequence[FrameSampler], *, start: int = 0,
               end: int | None = None, backend: str = "auto", small_frame_threads: int | None = None,
               stats: DecodeStats | None = None) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Decode ``path`` once, in order, and yield ``(frame index, [one array per sampler])``: one decode serves
    every view of the frame (each sampler its own crop and size). Arguments as for :func:`iter_frames`."""
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"start must be a frame index >= 0, got {start!r}")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end <= start):
        raise ConfigError(f"end must be a frame index > start ({start}), got {end!r}")
    stats = DecodeStats() if stats is None else stats
    if not isinstance(path, (str, os.PathLike)):
        name = getattr(path, "name", None)
        name = Path(name if isinstance(name, str) else "<pipe>")
        if _pick_backend("pyav" if backend == "auto" else backend) != "pyav":
            raise DataError(f"reading video from {name} needs the PyAV backend; pip install 'foldedcnns[video]'")
        return _frames_pyav(path, name, samplers, start, end, small_frame_threads, stats)
    path = Path(path)
    _check_input(path)
    if _pick_backend(backend) == "pyav":
        if is_stream_path(path):  # opened at the first frame, in the caller's decoding thread
            return _lazy(lambda: _frames_pyav(str(path), path, samplers, start, end, small_frame_threads, stats))
        return _frames_pyav(str(path), path, samplers, start, end, small_frame_threads, stats)
    return _frames_opencv(path, samplers, start, end)


def iter_frames(path: str | os.PathLike[str] | BinaryIO, *, size: tuple[int, int] | int | None = None,
                start: int = 0, end: int | None = None, crop: Crop | None = None, backend: str = "auto",
                small_frame_threads: int | None = None,
                stats: DecodeStats | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``path`` in order and yield ``(frame index, (H, W, 3) RGB uint8 array)``.

    Args:
        path: a video file, a FIFO, or a readable binary file object such as ``sys.stdin.buffer`` (PyAV
            only). A pipe is read once, in order; an MP4 whose index comes after its frames cannot be
            streamed (that is a one-line error): pipe MPEG-TS, or an MP4 written with ``movflags=faststart``.
        size: ``(height, width)`` (or one int for a square) to resize to, nearest neighbour.
        start, end: yield frames ``start <= index < end``; earlier frames are decoded and dropped
            (no seeking), and decoding stops at ``end`` or at the end of the stream.
        crop: ``(x, y, width, height)`` box cut out of each frame before resizing.
        backend: ``auto`` (PyAV, else OpenCV), ``pyav`` or ``opencv``.
        small_frame_threads: decoder threads for PyAV on videos of at most :data:`SMALL_FRAME_PIXELS` pixels per
            frame (default: FFmpeg's choice, about one per core); one leaves the other cores to a model
            running next to the decoder. Larger videos keep FFmpeg's threads: their decoding is the
            bottleneck (docs/inference.md has the measured figures).
        stats: filled in while decoding (damaged packets skipped; PyAV only).

    A missing or unreadable file raises :class:`DataError` at the call, before any frame (a FIFO is
    opened at the first frame: opening it waits for its writer). A damaged packet mid-stream is skipped
    and counted in ``stats``; damage at the end of the stream (a cut file) or a read error raises
    :class:`DataError` naming the file and the last good frame, after every frame decoded before it
    has been yielded (the OpenCV backend cannot tell a cut from the end of the stream).
    """
    size = check_size(size)
    if crop is not None:
        crop = tuple(int(v) for v in crop)  # type: ignore[assignment]
        if len(crop) != 4:
            raise ConfigError(f"crop must be (x, y, width, height), got {crop!r}")
    name = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<pipe>")
    sampler = FrameSampler(size, crop, name if isinstance(name, (str, os.PathLike)) else "<pipe>")
    views = iter_views(path, [sampler], start=start, end=end, backend=backend,
                       small_frame_threads=small_frame_threads, stats=stats)
    return ((index, frame) for index, (frame,) in views)


def _lazy(make: Callable[[], Iterator[tuple[int, list[np.ndarray]]]]) -> Iterator[tuple[int, list[np.ndarray]]]:
    yield from make()


def _no_frames(path: Path, last: int, start: int) -> DataError:
    if last < 0:
        return DataError(f"no video frame could be decoded from {path}; the file is empty or not a video")
    return DataError(f"{path} has only {last + 1} frames, none at or after the first frame asked for ({start}); "
                     "ask for frames the video has")


def open_pyav(source: str | BinaryIO, path: Path) -> Any:
    """An open PyAV container with a decodable video stream; a one-line :class:`DataError` otherwise."""
    import av

    streamed = not isinstance(source, str) or is_stream_path(source)
    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        hint = _PIPE_HINT if streamed else "the file is not a readable video"
        raise DataError(f"cannot open video {path} ({exc}); {hint}") from exc
    if not container.streams.video or container.streams.video[0].codec_context is None:  # none, or no decoder
        container.close()
        raise DataError(f"{path} has no decodable video stream; the file is not a readable video")
    return container


def _frames_pyav(source: str | BinaryIO, path: Path, samplers: Sequence[FrameSampler], start: int, end: int | None,
                 small_frame_threads: int | None, stats: DecodeStats) -> Iterator[tuple[int, list[np.ndarray]]]:
    streamed = not isinstance(source, str) or is_stream_path(source)
    container = open_pyav(source, path)
    return _decode_pyav(container, path, samplers, start, end, small_frame_threads, stats, streamed)


class CutStream(Exception):
    """The last packet of a stream was cut or corrupt: the file ends there."""


def _decode_packet(packet: Any, errors: type[Exception]) -> tuple[list[Any], bool]:
    """The frames a packet completes, and whether the decoder accepted it (it may refuse a damaged one)."""
    try:
        return packet.decode(), True
    except errors as exc:
        if isinstance(exc, MemoryError):  # out of memory is no damage to skip
            raise
        return [], False


def pyav_frames(packets: Iterable[Any], stream: Any, stats: DecodeStats) -> Iterator[Any]:
    """Decoded frames of ``packets`` (demuxed from ``stream``) in order, damage handled as ffmpeg does (see
    the module docstring).

    A packet flagged corrupt is held until another packet follows it: then it was mid-stream (at the
    seam of joined MPEG-TS segments it is whole) and goes to the decoder like any other; if the
    stream ends instead, the file was cut there and it is dropped. A packet the decoder refuses is
    counted and skipped. When the last packet was damaged, :class:`CutStream` follows the frames still
    in the decoder.
    """
    import av

    errors = av.error.FFmpegError
    held, last_damaged = None, False
    for packet in packets:
        if packet.size == 0:  # the demuxer's end-of-stream packet: flushed below
            continue
        if held is not None:
            frames, _ = _decode_packet(held, errors)  # already counted, whether or not the decoder takes it
            yield from frames
            held = None
        if packet.is_corrupt:
            stats.damaged_packets += 1
            held, last_damaged = packet, True
            continue
        frames, ok = _decode_packet(packet, errors)
        stats.damaged_packets += not ok
        last_damaged = not ok
        yield from frames
    yield from stream.codec_context.decode(None)
    if last_damaged:
        raise CutStream("the last packet is cut or corrupt")


def decode_failure(path: Path, index: int, exc: BaseException) -> DataError:
    """The one-line error of a decode that failed after frame ``index`` (-1: before any frame)."""
    good = f"frames 0..{index} are good" if index >= 0 else "no frame is good"
    return DataError(f"decoding {path} failed after frame {index} ({exc}); the video is truncated or corrupt, {good}")


def set_threads(stream: Any, threads: int | None) -> None:
    """Frame and slice threads for ``stream`` (FFmpeg decodes several frames at once); ``threads`` caps
    them (None: FFmpeg's choice, about one per core)."""
    stream.thread_type = "AUTO"
    if threads is not None:
        stream.thread_count = threads


def _decode_pyav(container: Any, path: Path, samplers: Sequence[FrameSampler], start: int, end: int | None,
                 small_frame_threads: int | None, stats: DecodeStats,
                 streamed: bool) -> Iterator[tuple[int, list[np.ndarray]]]:
    import av

    stream = container.streams.video[0]
    pixels = stream.codec_context.width * stream.codec_context.height
    set_threads(stream, small_frame_threads if pixels <= SMALL_FRAME_PIXELS else None)
    index = -1
    try:
        for frame in pyav_frames(container.demux(stream), stream, stats):
            index += 1
            if index < start:
                continue
            if end is not None and index >= end:
                return
            yield index, [sampler.from_av(frame) for sampler in samplers]
    except (av.error.FFmpegError, CutStream) as exc:
        if streamed and index < 0:  # e.g. an MP4 whose index comes after its frames: a pipe cannot seek back
            raise DataError(f"cannot decode video {path} ({exc}); {_PIPE_HINT}") from exc
        raise decode_failure(path, index, exc) from exc
    finally:
        container.close()
    if index < start:
        raise _no_frames(path, index, start)


def _frames_opencv(path: Path, samplers: Sequence[FrameSampler], start: int,
                   end: int | None) -> Iterator[tuple[int, list[np.ndarray]]]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise DataError(f"cannot open video {path}; the file is not a readable video")
    return _decode_opencv(capture, path, samplers, start, end)


def _decode_opencv(capture: Any, path: Path, samplers: Sequence[FrameSampler], start: int,
                   end: int | None) -> Iterator[tuple[int, list[np.ndarray]]]:
    import cv2

    index = -1
    try:
        while end is None or index + 1 < end:
            if index + 1 < start:
                ok = capture.grab()  # decode without converting
                frame = None
            else:
                ok, frame = capture.read()
            if not ok:
                break
            index += 1
            if frame is not None:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                yield index, [sampler.from_rgb(rgb) for sampler in samplers]
    finally:
        capture.release()
    if index < start:
        raise _no_frames(path, index, start)


def write_video(path: str | os.PathLike[str], frames: Iterable[np.ndarray], *, fps: int = DEFAULT_FPS,
                codec: str = "libx264", options: dict[str, str] | None = None) -> int:
    """Encode ``(H, W, 3)`` RGB ``uint8`` frames into a video file (atomically); returns the frame count.

    Meant for tests and demos (H.264 in MP4 by default; H and W must be even). Needs PyAV.
    """
    try:
        import av
    except ImportError:
        raise DataError("writing videos needs PyAV; pip install 'foldedcnns[video]'") from None
    path = Path(path)
    container_format = CONTAINER_FORMATS.get(path.suffix.lower())
    if container_format is None:
        raise ConfigError(f"cannot tell the video format of {path}; use one of {', '.join(CONTAINER_FORMATS)}")
    count = 0
    with atomic_path(path, suffix=path.suffix) as tmp:
        container = av.open(str(tmp), mode="w", format=container_format)
        try:
            stream = None
            for rgb in frames:
                if stream is None:
                    height, width = rgb.shape[:2]
                    if height % 2 or width % 2:
                        raise ShapeError(f"video frames must have even height and width, got {height}x{width}")
                    stream = container.add_stream(codec, rate=fps)
                    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                    stream.options = dict(options or {})
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise DataError(f"no frames given for {path}; pass at least one frame")
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return count
