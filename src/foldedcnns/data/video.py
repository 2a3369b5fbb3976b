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

Resizing is nearest neighbour with OpenCV's ``INTER_NEAREST`` rule, as the original NoScope
preparation did. For the common ``yuv420p`` streams the resized frame is sampled straight from the
decoded planes and only the sampled pixels are converted to RGB (BT.601, or BT.709 when the stream
says so), which keeps decoding the only real cost.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from foldedcnns.data.crop import Crop
from foldedcnns.data.imageio import check_size, nearest_indices
from foldedcnns.errors import ConfigError, DataError, ShapeError
from foldedcnns.utils.atomic import atomic_path

BACKENDS = ("auto", "pyav", "opencv")
DEFAULT_FPS = 30
CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".ts": "mpegts"}

# Y'CbCr -> R'G'B' for 8-bit video: (Kr, Kb) of the matrix; limited range scales Y by 255/219, C by 255/224.
_KR_KB = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
_AV_COLORSPACE_BT709 = 1  # AVColorSpace.AVCOL_SPC_BT709
_AV_RANGE_FULL = 2  # AVColorRange.AVCOL_RANGE_JPEG
_FAST_FORMATS = ("yuv420p", "yuvj420p")
SMALL_FRAME_PIXELS = 640 * 480  # up to here ``small_frame_threads`` applies (see iter_frames)
_PIPE_HINT = ("a pipe can carry MPEG-TS, or an MP4 with its index first (movflags=faststart); pass the file's path "
              "for other MP4s")


def _yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
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


def _check_crop(crop: Crop | None, width: int, height: int, path: Path) -> None:
    if crop is not None:
        Crop.parse(crop).check_fits(width, height, path)


class _Sampler:
    """Turns decoded frames into cropped, resized RGB arrays; index tables are built once."""

    def __init__(self, size: tuple[int, int] | None, crop: Crop | None, path: Path) -> None:
        self.size, self.crop, self.path = size, crop, path
        self._tables: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _indices(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        key = (height, width)
        if key not in self._tables:
            _check_crop(self.crop, width, height, self.path)
            x0, y0, w, h = self.crop if self.crop is not None else (0, 0, width, height)
            out_h, out_w = self.size if self.size is not None else (h, w)
            self._tables[key] = (y0 + nearest_indices(h, out_h), x0 + nearest_indices(w, out_w))
        return self._tables[key]

    def from_rgb(self, rgb: np.ndarray) -> np.ndarray:
        if self.size is None and self.crop is None:
            return rgb
        rows, cols = self._indices(*rgb.shape[:2])
        return np.ascontiguousarray(rgb[rows[:, None], cols[None, :]])

    def from_av(self, frame: Any) -> np.ndarray:
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
        return _yuv_to_rgb(luma[rows[:, None], cols[None, :]], cb[r2, c2], cr[r2, c2], matrix, full)


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
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"start must be a frame index >= 0, got {start!r}")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end <= start):
        raise ConfigError(f"end must be a frame index > start ({start}), got {end!r}")
    if crop is not None:
        crop = tuple(int(v) for v in crop)  # type: ignore[assignment]
        if len(crop) != 4:
            raise ConfigError(f"crop must be (x, y, width, height), got {crop!r}")
    stats = DecodeStats() if stats is None else stats
    if not isinstance(path, (str, os.PathLike)):
        name = getattr(path, "name", None)
        name = Path(name if isinstance(name, str) else "<pipe>")
        if _pick_backend("pyav" if backend == "auto" else backend) != "pyav":
            raise DataError(f"reading video from {name} needs the PyAV backend; pip install 'foldedcnns[video]'")
        return _frames_pyav(path, name, _Sampler(size, crop, name), start, end, small_frame_threads, stats)
    path = Path(path)
    _check_input(path)
    sampler = _Sampler(size, crop, path)
    if _pick_backend(backend) == "pyav":
        if is_stream_path(path):  # opened at the first frame, in the caller's decoding thread
            return _lazy(lambda: _frames_pyav(str(path), path, sampler, start, end, small_frame_threads, stats))
        return _frames_pyav(str(path), path, sampler, start, end, small_frame_threads, stats)
    return _frames_opencv(path, sampler, start, end)


def _lazy(make: Callable[[], Iterator[tuple[int, np.ndarray]]]) -> Iterator[tuple[int, np.ndarray]]:
    yield from make()


def _no_frames(path: Path, last: int, start: int) -> DataError:
    if last < 0:
        return DataError(f"no video frame could be decoded from {path}; the file is empty or not a video")
    return DataError(f"{path} has only {last + 1} frames, none at or after the first frame asked for ({start}); "
                     "ask for frames the video has")


def _frames_pyav(source: str | BinaryIO, path: Path, sampler: _Sampler, start: int, end: int | None,
                 small_frame_threads: int | None, stats: DecodeStats) -> Iterator[tuple[int, np.ndarray]]:
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
    return _decode_pyav(container, path, sampler, start, end, small_frame_threads, stats, streamed)


class _CutStream(Exception):
    pass


def _decode_packet(packet: Any, errors: type[Exception]) -> tuple[list[Any], bool]:
    """The frames a packet completes, and whether the decoder accepted it (it may refuse a damaged one)."""
    try:
        return packet.decode(), True
    except errors as exc:
        if isinstance(exc, MemoryError):  # out of memory is no damage to skip
            raise
        return [], False


def _pyav_frames(container: Any, stream: Any, stats: DecodeStats) -> Iterator[Any]:
    """Decoded frames in order, damage handled as ffmpeg does (see the module docstring).

    A packet flagged corrupt is held until another packet follows it: then it was mid-stream (at the
    seam of joined MPEG-TS segments it is whole) and goes to the decoder like any other; if the
    stream ends instead, the file was cut there and it is dropped. A packet the decoder refuses is
    counted and skipped. When the last packet was damaged, :class:`_CutStream` follows the frames still
    in the decoder.
    """
    import av

    errors = av.error.FFmpegError
    held, last_damaged = None, False
    for packet in container.demux(stream):
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
        raise _CutStream("the last packet is cut or corrupt")


def _decode_pyav(container: Any, path: Path, sampler: _Sampler, start: int, end: int | None,
                 small_frame_threads: int | None, stats: DecodeStats,
                 streamed: bool) -> Iterator[tuple[int, np.ndarray]]:
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame and slice threads: FFmpeg decodes several frames at once
    pixels = stream.codec_context.width * stream.codec_context.height
    if small_frame_threads is not None and pixels <= SMALL_FRAME_PIXELS:
        stream.thread_count = small_frame_threads
    index = -1
    try:
        for frame in _pyav_frames(container, stream, stats):
            index += 1
            if index < start:
                continue
            if end is not None and index >= end:
                return
            yield index, sampler.from_av(frame)
    except (av.error.FFmpegError, _CutStream) as exc:
        if streamed and index < 0:  # e.g. an MP4 whose index comes after its frames: a pipe cannot seek back
            raise DataError(f"cannot decode video {path} ({exc}); {_PIPE_HINT}") from exc
        good = f"frames 0..{index} are good" if index >= 0 else "no frame is good"
        raise DataError(f"decoding {path} failed after frame {index} ({exc}); the video is truncated or "
                        f"corrupt, {good}") from exc
    finally:
        container.close()
    if index < start:
        raise _no_frames(path, index, start)


def _frames_opencv(path: Path, sampler: _Sampler, start: int, end: int | None) -> Iterator[tuple[int, np.ndarray]]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise DataError(f"cannot open video {path}; the file is not a readable video")
    return _decode_opencv(capture, path, sampler, start, end)


def _decode_opencv(capture: Any, path: Path, sampler: _Sampler, start: int,
                   end: int | None) -> Iterator[tuple[int, np.ndarray]]:
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
                yield index, sampler.from_rgb(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
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
