"""The work items of ``--ray`` (shards) and the Ray Data task that decodes one into batches of views.

Shards. An image set is cut into shards of :data:`IMAGE_SHARD_BATCHES` whole batches; a cache folder is
one shard. A video file is indexed on the driver without decoding
(:func:`~foldedcnns.data.video_segments.index_video`) and cut at keyframes
(:func:`~foldedcnns.data.video_segments.plan_segments`), so one long video spreads over the cluster's
decode tasks, each decoding its part with one FFmpeg thread.

Alignment. A model folds groups of f frames counted from the start of the video, and the driver and the
actors cut the same batches of ``batch_size`` frames (a multiple of every model's fold) as one machine
does. Keyframes fall anywhere, so a shard does not keep its segment's frames as they are: it *owns* the
frames from its segment's first frame rounded up to a multiple of ``batch_size`` up to the next shard's
such multiple (the first shard from frame 0, the last to the end). It decodes from the keyframe of the
segment that holds its first owned frame through the segment that holds its last (several segments
when they are shorter than a batch; past a segment's end the decoder simply carries on into the next
GOP), drops the frames before its first owned frame and stops after its last. Every owned frame is
therefore decoded exactly as by the segment decoder and every batch is the batch of one machine, so a
shard's rows need no regrouping: the driver only sorts them (shard, then batch). The price is at most
one batch (plus the rest of a GOP) decoded twice per shard boundary, where regrouping on the driver would
send every decoded image through the driver.

Faults. A damaged file ends with the sequential tail segment (``stop`` None: frames counted on from its
keyframe, as with one decoder); a shard that reaches into it decodes it the same way from its own
keyframe, so it keeps every frame before the fault and raises the same one-line error. A file that
cannot be indexed (not a video, unreadable) is one shard decoded sequentially, which fails as the
local path does, and so is a file that is only a sequential tail (damaged before its second keyframe, or
without a timestamp on every packet). The driver writes the rows of every shard in order up to the first
error.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foldedcnns.data.frames import FrameSampler
from foldedcnns.data.model_input import RGB_CHANNELS
from foldedcnns.data.video_segments import Segment, VideoIndex, decode_segment, index_video, plan_segments
from foldedcnns.errors import DataError, FoldedCNNsError
from foldedcnns.inference.decoding import DecodedBatch, DecodePlan, SourceInfo, ViewSpec, decode_batches
from foldedcnns.inference.sources import IMAGES, VIDEO, Source

# Batches per image shard: each shard is decoded by one task.
IMAGE_SHARD_BATCHES = 4
# FFmpeg threads of a decode task (each task reserves one CPU).
DECODER_THREADS = 1


@dataclass(frozen=True)
class Shard:
    """One decode task's work on input number ``source``: ``paths`` (the video, or images starting at
    position ``offset`` of the input); for a video, ``segment`` is what is decoded (None: the whole file,
    sequentially) and ``keep`` the frames it owns, ``keep[0] <= frame < keep[1]`` (None: to the end)."""

    source: int
    number: int
    kind: str
    name: str
    paths: tuple[str, ...]
    offset: int = 0
    segment: Segment | None = None
    keep: tuple[int, int | None] = (0, None)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def video_shards(source: int, video: Source, index: VideoIndex, batch_size: int, workers: int) -> list[Shard]:
    """The shards of one indexed video, cut for ``workers`` decode tasks (see the module docstring)."""
    segments = plan_segments(index, workers)
    if len(segments) == 1 and segments[0].stop is None:  # only a sequential tail: decoded as by one decoder
        return [Shard(source, 0, VIDEO, video.name, (str(video.paths[0]),))]
    starts = sorted({0} | {_round_up(s.first, batch_size) for s in segments
                           if _round_up(s.first, batch_size) < index.frames})
    shards = []
    for number, first in enumerate(starts):
        stop = starts[number + 1] if number + 1 < len(starts) else None
        opening = max(i for i, s in enumerate(segments) if s.first <= first)
        closing = len(segments) - 1 if stop is None else min(
            i for i, s in enumerate(segments) if s.stop is None or s.stop >= stop)
        head, tail = segments[opening], segments[closing]
        shards.append(Shard(source, number, VIDEO, video.name, (str(video.paths[0]),),
                            segment=Segment(head.first, tail.stop, head.start_pts, tail.end_pts), keep=(first, stop)))
    return shards


def plan_shards(sources: Sequence[Source], batch_size: int,
                workers: int) -> tuple[list[Shard], dict[int, VideoIndex]]:
    """Every input's shards, in input order, and the index of each video input (by input number)."""
    shards: list[Shard] = []
    indexes: dict[int, VideoIndex] = {}
    for number, source in enumerate(sources):
        paths = tuple(str(p) for p in source.paths)
        if source.kind == VIDEO:
            try:
                indexes[number] = index_video(source.paths[0])
            except FoldedCNNsError:  # decoded sequentially in one task, which fails as the local path does
                shards.append(Shard(number, 0, source.kind, source.name, paths))
                continue
            shards += video_shards(number, source, indexes[number], batch_size, workers)
            continue
        step = batch_size * IMAGE_SHARD_BATCHES if source.kind == IMAGES else max(1, len(paths))  # a cache: one
        for shard, start in enumerate(range(0, len(paths), step)):
            shards.append(Shard(number, shard, source.kind, source.name, paths[start:start + step], offset=start))
    return shards, indexes


def _segment_batches(shard: Shard, index: VideoIndex, views: Sequence[ViewSpec],
                     batch_size: int) -> Iterator[DecodedBatch]:
    """The batches of the frames a video shard owns; the last carries the error of a fault."""
    assert shard.segment is not None
    first, stop = shard.keep
    keys: list[int | str] = []
    buffers = [np.empty((batch_size, *v.size, RGB_CHANNELS), dtype=np.uint8) for v in views]
    samplers = [FrameSampler(v.size, v.crop, shard.name) for v in views]
    frames = decode_segment(shard.paths[0], shard.segment, samplers, index, threads=DECODER_THREADS)
    got = 0
    try:
        for sampler in samplers:
            sampler.check_fits(index.width, index.height)
        for key, arrays in frames:
            if key < first:
                continue
            if stop is not None and key >= stop:
                break
            for buffer, array in zip(buffers, arrays, strict=True):
                buffer[len(keys)] = array
            keys.append(key)
            got += 1
            if len(keys) == batch_size:
                yield DecodedBatch(keys, buffers)
                keys, buffers = [], [np.empty_like(b) for b in buffers]
        _check_count(shard, got, index)
    except FoldedCNNsError as exc:
        yield DecodedBatch(keys, [b[:len(keys)] for b in buffers], error=exc)
        return
    finally:
        frames.close()
    if keys:
        yield DecodedBatch(keys, [b[:len(keys)] for b in buffers])


def _check_count(shard: Shard, got: int, index: VideoIndex) -> None:
    """A shard of the clean part of a file must give every frame it owns (the index counted them)."""
    assert shard.segment is not None
    if shard.segment.stop is None:
        return
    first, stop = shard.keep
    end = index.frames if stop is None else stop
    if got != end - first:
        raise DataError(f"decoding {shard.name} by segments gave {got} frames for frames {first}..{end - 1} "
                        f"(expected {end - first}); the file is damaged there, run it without --ray")


def shard_batches(shard: Shard, index: VideoIndex | None, views: Sequence[ViewSpec],
                  batch_size: int) -> Iterator[DecodedBatch]:
    """Decode ``shard`` into batches of ``batch_size`` frames (keys: frame indices, or positions of images in
    the input); the last batch carries the error of a fault."""
    if shard.segment is not None and index is not None:
        yield from _segment_batches(shard, index, views, batch_size)
        return
    source = Source(shard.kind, shard.name, tuple(Path(p) for p in shard.paths))
    done = shard.offset
    for batch in decode_batches(source, views, batch_size, DecodePlan(decoders=1, threads=DECODER_THREADS),
                                SourceInfo()):
        if shard.kind == IMAGES:
            batch.keys = list(range(done, done + len(batch.keys)))
            done += len(batch.keys)
        yield batch


def decode_shards(batch: dict[str, np.ndarray], *, shards: Sequence[Shard], indexes: dict[int, VideoIndex],
                  views: Sequence[ViewSpec], batch_size: int) -> Iterator[dict[str, list[Any]]]:
    """Ray UDF: the shards numbered in ``batch["shard"]``, decoded into one output row per batch of frames
    (``view0``, ``view1``, ...: one array per model; ``keys`` int64; ``pid``: the decoding process)."""
    for number in batch["shard"]:
        shard = shards[int(number)]
        decoded = shard_batches(shard, indexes.get(shard.source), views, batch_size)
        for chunk in itertools.count():
            started = time.perf_counter()
            item = next(decoded, None)
            if item is None:
                break
            yield {"source": [shard.source], "shard": [shard.number], "chunk": [chunk],
                   "keys": [np.asarray(item.keys, dtype=np.int64)],
                   **{f"view{m}": [view] for m, view in enumerate(item.views)},
                   "error": ["" if item.error is None else str(item.error)],
                   "decode_seconds": [time.perf_counter() - started], "pid": [os.getpid()]}
