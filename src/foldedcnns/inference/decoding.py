"""Decoding the inputs of ``predict`` and ``scrape`` into batches of model-ready views, in the background.

A *view* is what one model reads of a frame: its crop, resized to its input (``(height, width)``,
:class:`ViewSpec`). Every frame is decoded once and cut into every view (``scrape`` runs several models
on one decode). :func:`source_views` picks the decoder: a video file whose packets all carry timestamps
is indexed without decoding (:func:`~foldedcnns.data.video_segments.index_video`) and decoded by
``decoders`` processes in keyframe-aligned segments; a pipe (stdin, a FIFO) or a single decoder without
fidelity levers decodes sequentially with FFmpeg's threads, as before; an image set reads each image
once; a cache folder (``foldedcnns data cache``) is read from its memory-mapped arrays, no decoding.
:class:`BackgroundBatches` runs the decoding in a worker thread ahead of the model, through a bounded
queue.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from foldedcnns.data.crop import Crop
from foldedcnns.data.frames import FrameSampler
from foldedcnns.data.imageio import read_image
from foldedcnns.data.model_input import RGB_CHANNELS
from foldedcnns.data.video import DecodeOptions, DecodeStats, iter_views
from foldedcnns.data.video_segments import decode_segment, default_decoders, index_video, parallel_views, plan_segments
from foldedcnns.errors import ConfigError, FoldedCNNsError
from foldedcnns.inference.frame_cache import CACHE, read_cache_views
from foldedcnns.inference.preprocess import prepare_frame
from foldedcnns.inference.sources import STDIN, VIDEO, Source

# Batches decoded ahead of the model: enough to hide jitter, small enough to bound memory.
QUEUE_DEPTH = 4
# Seconds between checks of the stop flag while the worker waits on a full queue.
STOP_POLL_SECONDS = 0.1
# Seconds to wait for the decoder of a stream (stdin, a FIFO) to stop after the run ends early: one blocked
# on a pipe that nobody writes cannot be stopped, and is left behind (a daemon thread) after this long.
STREAM_JOIN_SECONDS = 1.0

FrameViews = tuple[Any, list[np.ndarray]]  # (key, one array per view)


@dataclass(frozen=True)
class ViewSpec:
    """One model's view of every frame: ``size`` (height, width) of its input, ``crop`` cut out first."""

    size: tuple[int, int]
    crop: Crop | None = None


@dataclass(frozen=True)
class DecodePlan:
    """How videos are decoded: ``decoders`` processes by segments (None: :func:`default_decoders` for the
    frame size; pipes always one), ``options`` the fidelity levers, ``threads`` the FFmpeg threads of a
    sequential decoder of small frames (None: FFmpeg's choice)."""

    decoders: int | None = None
    options: DecodeOptions = field(default_factory=DecodeOptions)
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.decoders is not None and (isinstance(self.decoders, bool) or not isinstance(self.decoders, int)
                                          or self.decoders < 1):
            raise ConfigError(f"--decoders must be an integer >= 1 (or auto), got {self.decoders!r}")

    @property
    def full_fidelity(self) -> bool:
        return self.options.every_frame and not self.options.fast


@dataclass
class SourceInfo:
    """What decoding learnt about a source: its frame count (known when indexed), the decoders used, the
    damaged packets skipped and the frames actually decoded."""

    frames: int | None = None
    decoders: int = 1
    decoded: int = 0
    stats: DecodeStats = field(default_factory=DecodeStats)


def check_plan(sources: Sequence[Source], plan: DecodePlan) -> None:
    """Refuse fidelity levers on a pipe: skipping frames needs the timestamps of every frame up front."""
    if not plan.full_fidelity:
        for source in sources:
            if source.stream:
                name = "stdin" if source.name == STDIN else source.name
                raise ConfigError(f"--decode-frames/--fast-decode need a video file, not the stream {name}; "
                                  "save the stream to a file first, or drop those options")


def source_views(source: Source, views: Sequence[ViewSpec], plan: DecodePlan,
                 info: SourceInfo) -> Iterator[tuple[int | str, list[np.ndarray]]]:
    """Yield ``(key, [one array per view])`` for every decoded frame of ``source``, in order (see the module
    docstring). ``info`` is filled in as decoding goes."""
    if source.kind == CACHE:
        index_frames, arrays = read_cache_views(source.paths[0], views)
        info.frames = info.decoded = len(index_frames)
        for row, key in enumerate(index_frames.tolist()):
            yield key, [a[row] for a in arrays]
        return
    if source.kind != VIDEO:
        for path in source.paths:
            image = read_image(path)
            info.decoded += 1
            yield str(path), [prepare_frame(image, v.size[0], v.size[1], v.crop, where=str(path)) for v in views]
        return
    samplers = [FrameSampler(v.size, v.crop, source.name) for v in views]
    if source.stream or (plan.decoders == 1 and plan.full_fidelity):
        yield from _counted(_sequential(source, samplers, plan, info), info)
        return
    path = source.paths[0]
    index = index_video(path)
    for sampler in samplers:
        sampler.check_fits(index.width, index.height)
    info.frames = index.frames if index.timestamps_ok else None
    decoders = plan.decoders or default_decoders(index.width, index.height)
    if decoders == 1 and plan.full_fidelity:
        yield from _counted(_sequential(source, samplers, plan, info), info)
        return
    segments = plan_segments(index, decoders)
    info.decoders = min(decoders, len(segments))
    if info.decoders == 1:
        frames = decode_segment(path, segments[0], samplers, index, options=plan.options, stats=info.stats,
                                threads=None)
    else:
        frames = parallel_views(path, samplers, index, segments, decoders, options=plan.options, stats=info.stats)
    yield from _counted(frames, info)


def _sequential(source: Source, samplers: Sequence[FrameSampler], plan: DecodePlan,
                info: SourceInfo) -> Iterator[tuple[int, list[np.ndarray]]]:
    video = sys.stdin.buffer if source.name == STDIN and not source.paths else source.paths[0]
    return iter_views(video, samplers, small_frame_threads=plan.threads, stats=info.stats)


def _counted(frames: Iterator[FrameViews], info: SourceInfo) -> Iterator[FrameViews]:
    for item in frames:
        info.decoded += 1
        yield item


@dataclass
class DecodedBatch:
    """Frames of one batch: their ``keys`` and one ``(N, H, W, 3)`` uint8 array per view; ``error`` is set on
    the last batch of a faulty input."""

    keys: list[int | str]
    views: list[np.ndarray]
    error: FoldedCNNsError | None = None


def decode_batches(source: Source, views: Sequence[ViewSpec], batch_size: int, plan: DecodePlan,
                   info: SourceInfo, stop: threading.Event | None = None) -> Iterator[DecodedBatch]:
    """Decode ``source`` into batches of ``batch_size`` frames, in order.

    When decoding fails part-way, the last batch holds the frames decoded since the previous one
    (possibly none) and carries the error; nothing decoded is lost. Decoding ends early, between two
    frames, once ``stop`` is set.
    """
    keys: list[int | str] = []
    buffers = [np.empty((batch_size, *v.size, RGB_CHANNELS), dtype=np.uint8) for v in views]
    frames = source_views(source, views, plan, info)
    try:
        for key, arrays in frames:
            if stop is not None and stop.is_set():
                return
            for buffer, array in zip(buffers, arrays, strict=True):
                buffer[len(keys)] = array
            keys.append(key)
            if len(keys) == batch_size:
                yield DecodedBatch(keys, buffers)
                keys, buffers = [], [np.empty_like(b) for b in buffers]
    except FoldedCNNsError as exc:
        yield DecodedBatch(keys, [b[:len(keys)] for b in buffers], error=exc)
        return
    finally:
        frames.close()  # stops decoding processes now, not when the generator is collected
    if keys:
        yield DecodedBatch(keys, [b[:len(keys)] for b in buffers])


class _Fault:
    """An unexpected exception of the worker, re-raised in the consumer's thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class BackgroundBatches:
    """Iterate :func:`decode_batches` while a worker thread decodes ahead (a bounded queue).

    ``decode_seconds`` is the worker's busy time (waiting on a full queue excluded): the run's own
    measure of the decode-limited rate; ``info`` what decoding met. The worker of a stream may be
    blocked on its pipe: it is waited for at most :data:`STREAM_JOIN_SECONDS` when the consumer stops early.
    """

    def __init__(self, source: Source, views: Sequence[ViewSpec], batch_size: int, plan: DecodePlan,
                 depth: int = QUEUE_DEPTH) -> None:
        self._stop = threading.Event()
        self.info = SourceInfo()
        self._join_seconds = STREAM_JOIN_SECONDS if source.stream else None
        self._batches = decode_batches(source, views, batch_size, plan, self.info, self._stop)
        self.decode_seconds = 0.0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._work, name=f"decode-{source.stem}", daemon=True)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=STOP_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            while True:
                started = time.perf_counter()
                batch = next(self._batches, None)
                self.decode_seconds += time.perf_counter() - started
                if batch is None:
                    break
                if not self._put(batch):
                    return
            self._put(_END)
        except BaseException as exc:  # a bug, not a data fault: the consumer re-raises it
            self._put(_Fault(exc))
        finally:
            self._batches.close()

    def __iter__(self) -> Iterator[DecodedBatch]:
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Fault):
                    raise item.exc
                yield item
        finally:
            self._stop.set()
            self._thread.join(self._join_seconds)
