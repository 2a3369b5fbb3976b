"""Prediction over videos and image sets: decode in the background, classify, write one CSV per input.

For each source a worker thread decodes, crops and resizes frames into batches of ``batch_size``
(a multiple of the fold) and hands them through a bounded queue to the caller's thread, which runs
the model and appends rows to the CSV. The CSV is written under a temporary name and renamed at the
end. When decoding fails part-way (a truncated video, an unreadable image), the rows of every frame
decoded before the fault go to ``NAME.partial`` (never over ``NAME``), and the source's result
carries the error; damaged video packets skipped mid-stream are counted in it. An existing CSV (or
``.partial``) is refused unless ``overwrite``. Streams (stdin, FIFOs) are read once: the isolated
stage measurement, which decodes frames again, leaves them out.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from foldedcnns.data.crop import Crop
from foldedcnns.data.model_input import RGB_CHANNELS
from foldedcnns.data.video import DecodeStats
from foldedcnns.errors import ConfigError, DataError, FoldedCNNsError
from foldedcnns.inference.csvout import PredictionCSV, output_paths
from foldedcnns.inference.predictor import Predictor
from foldedcnns.inference.sources import STDIN, VIDEO, Source, check_task_match, iter_source, resolve_inputs
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads

# Cores left to the decoding worker (and the decoder's own threads) when the model runs on the CPU.
DECODE_CORES = 1
# Batches decoded ahead of the model: enough to hide jitter, small enough to bound memory.
QUEUE_DEPTH = 4
# Seconds between checks of the stop flag while the worker waits on a full queue.
STOP_POLL_SECONDS = 0.1
# Isolated stage measurement after a run: at most this many frames are decoded again ...
PROFILE_FRAMES = 512
# ... and the model runs on them for at least this long.
PROFILE_MODEL_SECONDS = 0.5
# Seconds to wait for the decoder of a stream (stdin, a FIFO) to stop after the run ends early: one blocked
# on a pipe that nobody writes cannot be stopped, and is left behind (a daemon thread) after this long.
STREAM_JOIN_SECONDS = 1.0


@dataclass(frozen=True)
class SourceResult:
    """What happened to one input: rows written, time per stage, the fault if decoding stopped early, and the
    damaged video packets skipped mid-stream (as ffmpeg skips them)."""

    source: str
    kind: str
    output: str
    rows: int
    wall_seconds: float
    decode_seconds: float
    model_seconds: float
    error: str | None = None
    damaged_packets: int = 0


@dataclass(frozen=True)
class StageThroughput:
    """Frames per second of each stage measured alone, on the same frames, one after the other."""

    frames: int
    decode_fps: float
    model_fps: float


@dataclass(frozen=True)
class PredictReport:
    """Results of a prediction run over all sources, with throughput figures (frames/s)."""

    results: list[SourceResult]
    fold: int
    batch_size: int
    backend: str
    device: str
    wall_seconds: float
    stages: StageThroughput | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return sum(r.rows for r in self.results)

    @property
    def end_to_end_fps(self) -> float:
        return self.frames / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def errors(self) -> list[str]:
        return [f"{r.source}: {r.error}" for r in self.results if r.error]

    @property
    def efficiency(self) -> float | None:
        """End-to-end frames/s over the slower of decode-only and model-only frames/s."""
        if self.stages is None or min(self.stages.decode_fps, self.stages.model_fps) <= 0:
            return None
        return self.end_to_end_fps / min(self.stages.decode_fps, self.stages.model_fps)

    def to_dict(self) -> dict[str, Any]:
        return {"results": [asdict(r) for r in self.results], "fold": self.fold, "batch_size": self.batch_size,
                "backend": self.backend, "device": self.device, "frames": self.frames,
                "wall_seconds": self.wall_seconds, "end_to_end_fps": self.end_to_end_fps,
                "stages": None if self.stages is None else asdict(self.stages), "efficiency": self.efficiency,
                "errors": self.errors, **self.extra}

    def raise_for_errors(self) -> None:
        """Raise one DataError naming every input whose decoding stopped early (their rows are kept)."""
        failed = [r for r in self.results if r.error]
        if not failed:
            return
        each = "; ".join(f"{r.error} (" + (f"kept the {r.rows} rows decoded before it in {r.output})" if r.rows
                                           else "no frame decoded; no CSV written)") for r in failed)
        prefix = f"{len(failed)} of {len(self.results)} inputs stopped early: " if len(self.results) > 1 else ""
        raise DataError(prefix + each)


@dataclass
class DecodedBatch:
    """Frames ``images`` (N, H, W, 3) uint8 with their keys; ``error`` is set on the last batch of a faulty input."""

    keys: list[int | str]
    images: np.ndarray
    error: FoldedCNNsError | None = None


def decode_batches(source: Source, size: tuple[int, int], batch_size: int, crop: Crop | None = None,
                   decode_threads: int | None = None, stop: threading.Event | None = None,
                   stats: DecodeStats | None = None) -> Iterator[DecodedBatch]:
    """Decode ``source`` into batches of ``batch_size`` frames at ``size`` (height, width), in order.

    When decoding fails part-way, the last batch holds the frames decoded since the previous one
    (possibly none) and carries the error; nothing decoded is lost. Decoding ends early, between two
    frames, once ``stop`` is set. ``stats`` counts the damaged video packets skipped.
    """
    height, width = size
    keys: list[int | str] = []
    images = np.empty((batch_size, height, width, RGB_CHANNELS), dtype=np.uint8)
    try:
        for key, frame in iter_source(source, size, crop, decode_threads=decode_threads, stats=stats):
            if stop is not None and stop.is_set():
                return
            images[len(keys)] = frame
            keys.append(key)
            if len(keys) == batch_size:
                yield DecodedBatch(keys, images)
                keys, images = [], np.empty_like(images)
    except FoldedCNNsError as exc:
        yield DecodedBatch(keys, images[:len(keys)], error=exc)
        return
    if keys:
        yield DecodedBatch(keys, images[:len(keys)])


class _Fault:
    """An unexpected exception of the worker, re-raised in the consumer's thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = object()


class BackgroundBatches:
    """Iterate :func:`decode_batches` while a worker thread decodes ahead (a bounded queue).

    ``decode_seconds`` is the worker's busy time (waiting on a full queue excluded); ``stats`` what the
    video decoder met. The worker of a stream may be blocked on its pipe: it is waited for at most
    :data:`STREAM_JOIN_SECONDS` when the consumer stops early.
    """

    def __init__(self, source: Source, size: tuple[int, int], batch_size: int, crop: Crop | None,
                 depth: int = QUEUE_DEPTH, decode_threads: int | None = None) -> None:
        self._stop = threading.Event()
        self.stats = DecodeStats()
        self._join_seconds = STREAM_JOIN_SECONDS if source.stream else None
        self._batches = decode_batches(source, size, batch_size, crop, decode_threads, self._stop, self.stats)
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


def predict_source(predictor: Predictor, source: Source, output: str | Path, *, crop: Crop | None = None,
                   progress: tqdm | None = None, decode_threads: int | None = None) -> SourceResult:
    """Classify every frame of ``source`` and write one CSV row per frame, in order, to ``output``.

    A decoding fault ends the input early: the rows decoded before it are written and the result's
    ``error`` says what went wrong. Anything else (a bug, Ctrl-C) leaves no file behind.
    """
    output = Path(output)
    started = time.perf_counter()
    model_seconds, error = 0.0, None
    batches = BackgroundBatches(source, predictor.input_hw, predictor.batch_size, crop,
                                decode_threads=decode_threads)
    with PredictionCSV(output, source.key_column, predictor.class_names) as writer:
        for batch in batches:
            if len(batch.keys):
                model_started = time.perf_counter()
                preds = predictor.predict_batch(batch.images)
                model_seconds += time.perf_counter() - model_started
                writer.write(batch.keys, preds.labels.tolist(), preds.scores.tolist())
                if progress is not None:
                    progress.update(len(batch.keys))
            if batch.error is not None:
                error = str(batch.error)
                writer.stopped_early()
    return SourceResult(source.name, source.kind, writer.output, writer.rows, time.perf_counter() - started,
                        batches.decode_seconds, model_seconds, error, batches.stats.damaged_packets)


def measure_stages(predictor: Predictor, sources: Sequence[Source], *, crop: Crop | None = None,
                   max_frames: int = PROFILE_FRAMES, min_model_seconds: float = PROFILE_MODEL_SECONDS,
                   decode_threads: int | None = None) -> StageThroughput | None:
    """Measure decode-only and model-only frames/s, one after the other, on up to ``max_frames`` frames.

    Decode-only decodes, crops and resizes the first frames of the sources, exactly as the pipeline
    does. Model-only classifies those frames in batches of the predictor's batch size (after one
    untimed warm-up batch) until ``min_model_seconds`` have passed. Returns None when nothing decodes.
    """
    frames: list[np.ndarray] = []
    decoded = 0
    started = time.perf_counter()
    for source in sources:
        for batch in decode_batches(source, predictor.input_hw, predictor.batch_size, crop, decode_threads):
            frames.append(batch.images[:max(0, max_frames - decoded)])
            decoded += len(batch.keys)
            if batch.error is not None or decoded >= max_frames:
                break
        if decoded >= max_frames:
            break
    decode_seconds = time.perf_counter() - started
    if decoded == 0:
        return None
    images = np.concatenate(frames)
    chunks = [images[i:i + predictor.batch_size] for i in range(0, len(images), predictor.batch_size)]
    predictor.predict_batch(chunks[0])
    done, started = 0, time.perf_counter()
    while True:
        for chunk in chunks:
            predictor.predict_batch(chunk)
            done += len(chunk)
        elapsed = time.perf_counter() - started
        if elapsed >= min_model_seconds:
            break
    return StageThroughput(decoded, decoded / decode_seconds, done / elapsed)


def model_threads(engine: Engine) -> int:
    """CPU threads for the model while a worker decodes: the engine's ``threads``, else all usable cores
    but :data:`DECODE_CORES`.

    PyTorch's intra-op threads wait for each other at every operator; when they share the cores with
    the decoder they stall, so the model leaves the decoder its own core. A GPU model needs only one.
    """
    if engine.threads is not None:
        return engine.threads
    if torch.device(engine.resolved().device).type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - DECODE_CORES)


def decoder_threads(device: torch.device) -> int | None:
    """Video decoder threads next to a model on ``device``: :data:`DECODE_CORES` when the model runs on
    the CPU (more threads would fight the model for its cores; docs/inference.md has the measured
    figures), else FFmpeg's default."""
    return DECODE_CORES if device.type == "cpu" else None


def plan_inputs(inputs: Sequence[str], out: str | Path, predictor: Predictor, crop: Crop | str | None,
                task_check: bool, overwrite: bool = False) -> tuple[Crop | None, list[Source], list[Path]]:
    """Parse the crop, resolve the inputs and their output CSVs (existing ones refused unless ``overwrite``),
    and check labelled folders fit the task. Standard input (``-``) has no name to derive a CSV name from:
    it must be the only input, with ``out`` a ``.csv`` file."""
    crop = Crop.parse(crop) if isinstance(crop, str) else crop
    sources = resolve_inputs(inputs)
    if any(s.name == STDIN for s in sources) and (len(sources) > 1 or Path(out).suffix.lower() != ".csv"):
        raise ConfigError(f"reading a video from stdin (-) writes one CSV: pass - as the only input and --out "
                          f"FILE.csv (got {len(sources)} inputs, --out {out})")
    outputs = output_paths(sources, out, overwrite)
    if task_check:
        for source in sources:
            check_task_match(source, predictor.config.task, predictor.input_hw, crop)
    return crop, sources, outputs


def run_predict(checkpoint: str | Path | dict[str, Any], inputs: Sequence[str], out: str | Path, *,
                engine: Engine | None = None, batch_size: int | None = None, crop: Crop | str | None = None,
                profile_frames: int = PROFILE_FRAMES, task_check: bool = True, progress: bool = False,
                overwrite: bool = False) -> PredictReport:
    """Predict every frame of every input into one CSV per input; see :func:`predict_source`.

    ``checkpoint``: a checkpoint (path or dict) or an OpenVINO IR ``.xml``. ``engine`` (default
    ``Engine()``, eager fp32 on the CPU) runs the model with :func:`model_threads` threads unless it names
    its own; the :class:`Predictor` is prepared under them, so engines that fix their thread count when
    they are prepared (openvino, onnxruntime, an IR) get the model's share of the cores. An int8 engine
    brings its calibration (:func:`~foldedcnns.inference.predictor.deployment_engine`). ``profile_frames``
    > 0 adds isolated decode-only and model-only throughput (:func:`measure_stages`). ``task_check``
    refuses labelled image folders of another task (:func:`check_task_match`). An existing CSV is
    refused unless ``overwrite``.
    """
    if isinstance(profile_frames, bool) or not isinstance(profile_frames, int) or profile_frames < 0:
        raise ConfigError(f"--profile-frames must be an integer >= 0, got {profile_frames!r}")
    engine = (Engine() if engine is None else engine).resolved()
    threads = model_threads(engine)  # the engine prepares under these; PyTorch's own count is the predictor's rule
    predictor = Predictor(checkpoint, engine=engine.replace(threads=threads), batch_size=batch_size)
    crop, sources, outputs = plan_inputs(inputs, out, predictor, crop, task_check, overwrite)
    total = None if any(s.kind == VIDEO for s in sources) else sum(len(s) for s in sources)
    results = []
    decode_threads = decoder_threads(predictor.device)
    with torch_threads(predictor.engine.pytorch_threads):  # set once here, so no batch changes it
        started = time.perf_counter()
        with tqdm(total=total, unit="frame", disable=not progress, dynamic_ncols=True) as bar:
            for source, output in zip(sources, outputs, strict=True):
                results.append(predict_source(predictor, source, output, crop=crop, progress=bar,
                                              decode_threads=decode_threads))
        wall = time.perf_counter() - started
        rereadable = [s for s in sources if not s.stream]
        stages = measure_stages(predictor, rereadable, crop=crop, max_frames=profile_frames,
                                decode_threads=decode_threads) if profile_frames else None
    extra: dict[str, Any] = {"model_threads": threads}
    damaged = sum(r.damaged_packets for r in results)
    if damaged:
        extra["damaged_packets"] = damaged
    if profile_frames and len(rereadable) < len(sources):
        names = ", ".join("stdin" if s.name == STDIN else s.name for s in sources if s.stream)
        extra["profile_skipped"] = (f"{names}: a stream (stdin or a FIFO) is read once; the decode-only and "
                                    "model-only figures leave it out")
    return PredictReport(results, predictor.fold, predictor.batch_size, predictor.backend, str(predictor.device),
                         wall, stages, extra=extra)
