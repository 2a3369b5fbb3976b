"""Decoding one video file by segments, in parallel worker processes, with the rows of a sequential decode.

Frame threading inside one FFmpeg decoder buys little (its threads wait on each other's reference rows,
and the per-frame Python work stays serial); independent decoders over independent parts of the file
scale with the cores, as Smol and Scanner do it (docs/inference.md has the figures). The plan:

1. :func:`index_video` reads the file's video packets once without decoding them (a demux-only pass,
   milliseconds): every frame's timestamp, the keyframes, and any packet the demuxer flags as damaged.
   Nothing trusts a header's frame count.
2. :func:`plan_segments` cuts the display order at keyframes into segments. A segment is decoded from
   its keyframe by a fresh single-threaded decoder and keeps the frames whose timestamps fall in its
   range; it reads a few packets past the next keyframe, so the leading B-frames of an open GOP (shown
   before that keyframe, decoded after it) still come out of the segment that owns them. Frame ``i`` is
   the ``i``-th timestamp in display order, exactly the index a sequential decode gives it.
3. Damage is left to the sequential rules (:func:`foldedcnns.data.video.pyav_frames`): the part of the
   file from the last keyframe before the first damaged packet to the end is one last segment decoded
   like a sequential decode, frame indices counted on from its keyframe, so a cut or corrupt file keeps
   the same rows and the same error as with one decoder. Files without a timestamp on every packet,
   pipes, and OpenCV are decoded sequentially.
4. :func:`parallel_views` runs the segments in N worker processes, segment ``k`` on worker ``k mod N``,
   and yields their frames in order. A worker runs at most :data:`LOOKAHEAD_SEGMENTS` segments ahead of
   the consumer per worker, which bounds memory. Workers are forked: they start in milliseconds and need
   no ``if __name__ == "__main__"`` guard in the user's script. A forked child may only use what is safe
   after ``fork`` in a threaded parent; these run FFmpeg (fresh decoder threads) and NumPy, never PyTorch
   or OpenVINO, whose thread pools are not.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import multiprocessing
import os
import queue
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foldedcnns.data.frames import FrameSampler
from foldedcnns.data.video import (
    SMALL_FRAME_PIXELS,
    CutStream,
    DecodeOptions,
    DecodeStats,
    decode_failure,
    open_pyav,
    pyav_frames,
    set_threads,
)
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.utils.signals import worker_init

# Segments planned per decoding worker: several, so that the workers finish close together.
SEGMENTS_PER_WORKER = 4
# A segment holds at least this many frames (fewer only when the file has fewer).
MIN_SEGMENT_FRAMES = 64
# Frames per message from a worker.
CHUNK_FRAMES = 64
# Segments a worker may decode ahead of the consumer (per worker): bounds the frames held in queues.
LOOKAHEAD_SEGMENTS = 2
# Seconds between checks that the workers are alive while waiting for frames.
POLL_SECONDS = 0.2
# Most decoding processes chosen by default.
MAX_DEFAULT_DECODERS = 8
_NO_PTS = np.iinfo(np.int64).min
_FINGERPRINT_BYTES = 1 << 20


@dataclass(frozen=True)
class VideoIndex:
    """One demux-only pass over a file's video stream (no decoding).

    ``display_pts`` (F,) int64: every frame's timestamp in display order (frame ``i`` has the ``i``-th);
    ``keyframes``: ``(display index, pts)`` of each keyframe, in decode order, up to the first damaged
    packet; ``damaged``: the demuxer flagged a packet as damaged (``tail_from`` is then the keyframe the
    sequential tail starts at); ``timestamps_ok``: every packet has a distinct timestamp (else nothing
    runs in parallel); ``width`` x ``height`` the frame size; ``fingerprint`` a digest of the file (size,
    timestamps, first and last MiB) that tells when the file behind a cache has changed.
    """

    path: str
    display_pts: np.ndarray
    keyframes: tuple[tuple[int, int], ...]
    damaged: bool
    timestamps_ok: bool
    width: int
    height: int
    fingerprint: str

    @property
    def frames(self) -> int:
        return len(self.display_pts)

    def index_of(self, pts: np.ndarray) -> np.ndarray:
        """Display indices of timestamps ``pts`` (N,) (each must be one of :attr:`display_pts`)."""
        return np.searchsorted(self.display_pts, pts)


def file_fingerprint(path: str | Path, extra: bytes = b"") -> str:
    """A short digest of a file's size and its first and last MiB (plus ``extra``)."""
    digest = hashlib.sha256(extra)
    size = os.path.getsize(path)
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_FINGERPRINT_BYTES))
        if size > _FINGERPRINT_BYTES:
            handle.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
            digest.update(handle.read())
    return digest.hexdigest()[:32]


def index_video(path: str | Path) -> VideoIndex:
    """Read the packets of ``path``'s first video stream without decoding them; see :class:`VideoIndex`."""
    path = Path(path)
    container = open_pyav(str(path), path)
    try:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        pts, keys, damaged_at = [], [], None
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_corrupt and damaged_at is None:
                damaged_at = len(pts)
            pts.append(_NO_PTS if packet.pts is None else int(packet.pts))
            keys.append(bool(packet.is_keyframe))
    except OSError as exc:
        raise DataError(f"cannot read video {path} ({exc}); check the file") from exc
    finally:
        container.close()
    decode_order = np.asarray(pts, dtype=np.int64)
    display = np.sort(decode_order)
    ok = bool(len(display)) and display[0] != _NO_PTS and bool(np.all(np.diff(display) > 0))
    clean = len(pts) if damaged_at is None else damaged_at
    keyframes = tuple((int(np.searchsorted(display, p)), int(p)) for p, k in zip(pts[:clean], keys[:clean],
                                                                                  strict=True) if k) if ok else ()
    extra = decode_order.tobytes() + f"{width}x{height}".encode()
    return VideoIndex(str(path), display, keyframes, damaged_at is not None, ok, width, height,
                      file_fingerprint(path, extra))


@dataclass(frozen=True)
class Segment:
    """Frames ``first <= index < stop`` of a file, decoded from the keyframe at ``start_pts`` (None: from the
    start of the file) up to ``end_pts``, the next segment's keyframe (None: to the end of the file).
    ``stop`` None: the sequential tail, indices counted on from ``first`` (see the module docstring)."""

    first: int
    stop: int | None
    start_pts: int | None
    end_pts: int | None


def plan_segments(index: VideoIndex, workers: int, min_frames: int = MIN_SEGMENT_FRAMES) -> list[Segment]:
    """Cut ``index``'s frames at keyframes into about :data:`SEGMENTS_PER_WORKER` segments per worker, each of
    at least ``min_frames`` frames (in display order); a damaged file ends with its sequential tail. One
    segment when nothing can be cut (or one worker)."""
    if not index.timestamps_ok or not index.keyframes or workers <= 1:
        return [Segment(0, None if index.damaged or not index.timestamps_ok else index.frames, None, None)]
    starts = sorted({rank for rank, _ in index.keyframes if rank > 0})
    tail = starts[-1] if index.damaged and starts else None
    target = max(min_frames, -(-index.frames // (workers * SEGMENTS_PER_WORKER)))
    cuts, last = [0], 0
    for rank in starts:
        if rank - last >= target and index.frames - rank >= min_frames // 2 and (tail is None or rank <= tail):
            cuts.append(rank)
            last = rank
    if tail is not None and cuts[-1] != tail:
        cuts.append(tail)
    by_rank = dict(index.keyframes)
    segments = []
    for i, first in enumerate(cuts):
        nxt = cuts[i + 1] if i + 1 < len(cuts) else None
        stop = nxt if nxt is not None else (None if index.damaged else index.frames)
        segments.append(Segment(first, stop, None if first == 0 else by_rank[first],
                                None if nxt is None else by_rank[nxt]))
    return segments


def default_decoders(width: int, height: int) -> int:
    """Decoding processes for a ``width`` x ``height`` video when the user does not choose: one per usable
    core for frames larger than :data:`~foldedcnns.data.video.SMALL_FRAME_PIXELS` (decoding is the cost;
    docs/inference.md has the figures), else one (a small frame decodes faster than the model runs)."""
    if width * height <= SMALL_FRAME_PIXELS:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_DEFAULT_DECODERS))


def _from_keyframe(packets: Iterator[Any], start_pts: int) -> Iterator[Any] | None:
    """The packets from the keyframe at ``start_pts`` on, or None when the demuxer is already past it (a seek
    landed after it: timestamp seeking in MPEG-TS is approximate)."""
    for packet in packets:
        if packet.pts is not None and packet.pts == start_pts and packet.is_keyframe:
            return itertools.chain((packet,), packets)
        if packet.pts is not None and packet.pts > start_pts and packet.is_keyframe:
            return None
    return None


def _seek(container: Any, stream: Any, start_pts: int, path: Path) -> Iterator[Any]:
    """Packets from the keyframe at ``start_pts``: seek to it, else to a second or ten before it, else read from
    the start of the file (demuxing without decoding is cheap)."""
    second = max(1, int(1 / stream.time_base)) if stream.time_base else 1
    for target in (start_pts, start_pts - second, start_pts - 10 * second, None):
        if target is None:
            container.seek(0, backward=True, any_frame=False, stream=stream)
        else:
            container.seek(target, backward=True, any_frame=False, stream=stream)
        packets = _from_keyframe(iter(container.demux(stream)), start_pts)
        if packets is not None:
            return packets
    raise DataError(f"seeking in {path} did not reach its keyframe at timestamp {start_pts}; "
                    "decode it with --decoders 1")


def _until_after(packets: Iterator[Any], end_pts: int) -> Iterator[Any]:
    """The packets up to the keyframe at ``end_pts`` and those decoded after it but shown before it (an open
    GOP's leading B-frames), then nothing: the decoder is flushed there."""
    passed = False
    for packet in packets:
        if packet.size == 0:
            continue
        if passed and packet.pts is not None and packet.pts > end_pts:
            return
        if packet.pts is not None and packet.pts >= end_pts and packet.is_keyframe:
            passed = True
        yield packet


def decode_segment(path: str | Path, segment: Segment, samplers: Sequence[FrameSampler], index: VideoIndex, *,
                   options: DecodeOptions | None = None, stats: DecodeStats | None = None,
                   threads: int | None = 1) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Yield ``(frame index, views)`` for the frames of ``segment``, in order (see the module docstring).

    ``threads`` caps the decoder's threads (1: one core per worker process). With ``options`` that skip
    frames, only the decoded frames are yielded, under their true indices.
    """
    import av

    path = Path(path)
    options = DecodeOptions() if options is None else options
    stats = DecodeStats() if stats is None else stats
    container = open_pyav(str(path), path)
    stream = container.streams.video[0]
    set_threads(stream, threads)
    options.apply(stream)
    counted = segment.stop is None and options.every_frame
    last = segment.first - 1
    try:
        packets: Iterator[Any] = iter(container.demux(stream))
        if segment.start_pts is not None:
            packets = _seek(container, stream, segment.start_pts, path)
        if segment.end_pts is not None:
            packets = _until_after(packets, segment.end_pts)
        for frame in pyav_frames(packets, stream, stats):
            pts = frame.pts
            if pts is None or (segment.start_pts is not None and pts < segment.start_pts):
                continue  # an open GOP's leading frame: the previous segment's
            if segment.end_pts is not None and pts >= segment.end_pts:
                continue
            if counted:
                last += 1
            else:
                at = int(index.index_of(np.asarray([pts]))[0])
                if at >= index.frames or index.display_pts[at] != pts:
                    continue  # a frame the index does not know (damage): the tail's rules do not apply here
                last = at
            yield last, [sampler.from_av(frame) for sampler in samplers]
    except (av.error.FFmpegError, CutStream) as exc:
        raise decode_failure(path, last, exc) from exc
    finally:
        container.close()


def _check_count(path: Path, segment: Segment, got: int, options: DecodeOptions) -> None:
    if segment.stop is not None and options.every_frame and got != segment.stop - segment.first:
        raise DataError(f"decoding {path} by segments gave {got} frames for frames {segment.first}..{segment.stop - 1}"
                        f" (expected {segment.stop - segment.first}); the file is damaged there, decode it with "
                        "--decoders 1")


def _worker(path: str, segments: list[tuple[int, Segment]], samplers: list[FrameSampler], index: VideoIndex,
            options: DecodeOptions, out: Any, permits: Any, parent: int) -> None:
    worker_init(parent)
    for number, segment in segments:
        permits.acquire()
        stats = DecodeStats()
        got, keys, views = 0, [], [[] for _ in samplers]
        try:
            for key, frame_views in decode_segment(path, segment, samplers, index, options=options, stats=stats):
                keys.append(key)
                for bucket, view in zip(views, frame_views, strict=True):
                    bucket.append(view)
                got += 1
                if len(keys) == CHUNK_FRAMES:
                    out.put(("frames", number, np.asarray(keys), [np.stack(b) for b in views]))
                    keys, views = [], [[] for _ in samplers]
            if keys:
                out.put(("frames", number, np.asarray(keys), [np.stack(b) for b in views]))
            _check_count(Path(path), segment, got, options)
        except DataError as exc:
            if keys:
                out.put(("frames", number, np.asarray(keys), [np.stack(b) for b in views]))
            out.put(("error", number, str(exc), stats.damaged_packets))
            return
        except BaseException:  # a bug: the consumer raises it with the worker's traceback
            out.put(("fault", number, traceback.format_exc(), 0))
            return
        out.put(("end", number, "", stats.damaged_packets))


def parallel_views(path: str | Path, samplers: Sequence[FrameSampler], index: VideoIndex, segments: list[Segment],
                   workers: int, *, options: DecodeOptions | None = None,
                   stats: DecodeStats | None = None) -> Iterator[tuple[int, list[np.ndarray]]]:
    """Yield ``(frame index, views)`` of every segment, in order, decoded by ``workers`` processes.

    A decoding fault of a segment ends the iteration with its :class:`DataError` after every frame before
    it; the workers are stopped when the iteration ends, early or not (and die with this process).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--decoders must be an integer >= 1, got {workers!r}")
    options = DecodeOptions() if options is None else options
    stats = DecodeStats() if stats is None else stats
    workers = min(workers, len(segments))
    context = multiprocessing.get_context("fork")
    permits = context.Semaphore(LOOKAHEAD_SEGMENTS * workers)
    queues = [context.Queue() for _ in range(workers)]
    processes = [context.Process(target=_worker, name=f"foldedcnns-decode-{w}", daemon=True,
                                 args=(str(path), [(n, s) for n, s in enumerate(segments) if n % workers == w],
                                       list(samplers), index, options, queues[w], permits, os.getpid()))
                 for w in range(workers)]
    started: list[Any] = []
    try:
        for process in processes:
            process.start()
            started.append(process)
        for number in range(len(segments)):
            worker = number % workers
            while True:
                kind, got, payload, damaged = _next(queues[worker], processes[worker])
                if got != number:
                    raise RuntimeError(f"decoding worker {worker} sent segment {got}, expected {number}")
                if kind == "frames":
                    keys, views = payload
                    for row, key in enumerate(keys.tolist()):
                        yield key, [v[row] for v in views]
                    continue
                stats.damaged_packets += damaged
                if kind == "error":
                    raise DataError(payload)
                if kind == "fault":
                    raise RuntimeError(f"decoding worker {worker} failed:\n{payload}")
                permits.release()
                break
    finally:
        for process in started:
            if process.is_alive():
                process.terminate()
        for process in started:
            process.join(timeout=5)
        for q in queues:
            q.cancel_join_thread()
            q.close()


def _next(source: Any, process: Any) -> tuple[str, int, Any, int]:
    """The next message of a worker; a worker that died without a word is an error."""
    while True:
        try:
            kind, number, *rest = source.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if not process.is_alive():
                with contextlib.suppress(queue.Empty):
                    kind, number, *rest = source.get(timeout=POLL_SECONDS)
                    break
                raise RuntimeError(f"decoding process {process.name} exited with code {process.exitcode} "
                                   "without finishing its segments") from None
            continue
        break
    if kind == "frames":
        return kind, number, (rest[0], rest[1]), 0
    return kind, number, rest[0], rest[1]
