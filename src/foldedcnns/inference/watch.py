"""``foldedcnns watch``: classify live streams in real time, folding the frames of all streams together.

Threads: one :class:`~foldedcnns.inference.live.StreamReader` per stream (decode, cut each model's view,
reconnect), one model thread (:class:`~foldedcnns.inference.live_batcher.LiveBatcher` batches across the
streams in multiples of f within ``max_latency_ms``; every model of a SPEC classifies the batch; the rows go
to each stream's JSON-lines file, flushed after every batch), and the caller's thread, which waits. Before
the streams open, each model is timed on a batch of F and of N frames (the batcher's cost line).

Stopping (SIGINT/SIGTERM in the caller's thread, :meth:`WatchControl.stop`, or every stream done): the
readers stop reading, the batcher classifies what is queued (no drops, no waiting), the rows are flushed,
the metrics server closes and every thread is joined; the report says what each stream did. As with
``foldedcnns serve``, a stop by signal that answered everything queued ends normally (exit 0).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foldedcnns.data.crop import Crop
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.inference.live import OPEN_TIMEOUT_S, READ_TIMEOUT_S, StreamReader, StreamSource, parse_streams
from foldedcnns.inference.live_batcher import DEFAULT_QUEUE_FRAMES, BatchCost, LiveBatcher, LiveFrame
from foldedcnns.inference.live_output import LiveMetrics, RowSink, StreamStats, stream_outputs
from foldedcnns.inference.pipeline import Reader, common_fold
from foldedcnns.inference.predictor import deployment_engine
from foldedcnns.inference.scrape import ScrapeTask, build_readers, load_spec
from foldedcnns.runtime.engine import Engine
from foldedcnns.utils.signals import signal_name
from foldedcnns.utils.throttle import Throttle

LOG = logging.getLogger("foldedcnns.watch")
DEFAULT_MAX_LATENCY_MS = 500.0
DEFAULT_BATCH_FRAMES = 64   # N, rounded up to a multiple of F
DRAIN_TIMEOUT_S = 30.0      # longest wait for the queued frames at a stop
DROP_LOG_EVERY_S = 10.0     # at most one "behind" line this often
WARMUP_REPEATS = 3
SPEC_SUFFIX = ".json"


@dataclass(frozen=True)
class WatchOptions:
    """How ``watch`` runs: the latency bound L and whether late frames are dropped, ``realtime`` pacing of
    files, each stream's queue, the open/read timeouts, the metrics
    server (``metrics_port`` None: none; 0: a free port) and ``overwrite`` of existing row files."""

    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS
    drop: bool = True
    realtime: bool = False
    queue_frames: int = DEFAULT_QUEUE_FRAMES
    timeouts: tuple[float, float] = (OPEN_TIMEOUT_S, READ_TIMEOUT_S)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    overwrite: bool = False


class WatchControl:
    """Handle on a running :func:`run_watch` (from another thread): :attr:`ready` is set once the streams are
    being read (then :attr:`metrics_port` is the metrics server's port); :meth:`stop` ends it as a signal does."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.metrics_port: int | None = None

    def stop(self) -> None:
        self.stopping.set()


@dataclass
class WatchReport:
    """What a watch did: each stream's counters, the batches, the models, and why it ended."""

    streams: list[StreamStats]
    tasks: list[dict[str, Any]]
    fold: int
    max_batch: int
    max_latency_ms: float
    batches: int = 0
    frames: int = 0
    padded_slots: int = 0
    model_seconds: float = 0.0
    wall_seconds: float = 0.0
    stopped_by: str | None = None
    metrics_port: int | None = None

    @property
    def dropped(self) -> int:
        return sum(sum(s.dropped.values()) for s in self.streams)

    def to_dict(self) -> dict[str, Any]:
        return {"streams": [s.to_dict() for s in self.streams], "tasks": self.tasks, "fold": self.fold,
                "max_batch": self.max_batch, "max_latency_ms": self.max_latency_ms, "batches": self.batches,
                "frames": self.frames, "dropped": self.dropped, "padded_slots": self.padded_slots,
                "mean_batch": round(self.frames / self.batches, 2) if self.batches else 0.0,
                "model_seconds": round(self.model_seconds, 4), "wall_seconds": round(self.wall_seconds, 3),
                "stopped_by": self.stopped_by, "metrics_port": self.metrics_port}

    def raise_for_failures(self) -> None:
        """A one-line DataError when a stream failed for good (a file that cannot be read, a crop outside)."""
        failed = [s for s in self.streams if s.status == "failed"]
        if failed:
            raise DataError(f"stream {failed[0].name} failed: {failed[0].error}"
                            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))


def watch_readers(target: str | Path, *, engine: Engine | None, crop: Crop | str | None, batch_size: int | None,
                  data: str | Path | None) -> list[Reader]:
    """The models of ``target``: a scrape SPEC (``.json``: one named Reader per task) or a checkpoint (one
    unnamed Reader with ``crop``); a task without its own batch size gets ``batch_size`` (default 64). A batch
    holds what the streams sent, often less than the batch size, so a static-shape engine (openvino, compile,
    cuda-graphs) is also prepared for the smaller shapes and runs such a batch at its own size, not padded."""
    is_spec = Path(target).suffix.lower() == SPEC_SUFFIX
    if is_spec and crop is not None:
        raise ConfigError("--crop goes with a checkpoint; a SPEC gives each task its own crop")
    if not is_spec and not Path(target).is_file():
        raise ConfigError(f"checkpoint {target} does not exist; pass a checkpoint or a scrape SPEC (.json)")
    if is_spec:
        tasks = load_spec(target)
    else:
        tasks = [ScrapeTask("model", Path(target), Crop.parse(crop) if isinstance(crop, str) else crop)]
        engine = deployment_engine(target, engine, data)
    tasks = [dataclasses.replace(t, batch_size=t.batch_size or batch_size or DEFAULT_BATCH_FRAMES) for t in tasks]
    readers, _ = build_readers(tasks, engine, partial_batches=True)
    return readers if is_spec else [Reader(readers[0].predictor, readers[0].crop, None)]


def _time_batch(reader: Reader, frames: int) -> float:
    height, width = reader.predictor.input_hw
    images = np.zeros((frames, height, width, 3), np.uint8)
    best = float("inf")
    for _ in range(WARMUP_REPEATS):
        start = time.perf_counter()
        reader.predictor.predict_batch(images)
        best = min(best, time.perf_counter() - start)
    return best


class _Session:
    """One run: the readers, the batcher, the model thread, the sink, the metrics (see the module doc)."""

    def __init__(self, readers: Sequence[Reader], sources: Sequence[StreamSource], sink: RowSink,
                 options: WatchOptions, metrics: LiveMetrics | None) -> None:
        self.readers, self.sources, self.sink, self.options, self.metrics = readers, sources, sink, options, metrics
        fold = common_fold(readers)
        largest = min(r.predictor.batch_size for r in readers)
        max_batch = max(fold, largest // fold * fold)
        cost = BatchCost(fold, 0.0, 0.0, max_batch)  # measured by the model thread before any stream opens
        self.stats = [StreamStats(s.name, s.url, output) for s, output in zip(sources, sink.outputs, strict=True)]
        self.batcher = LiveBatcher(len(sources), fold=fold, max_batch=max_batch, max_latency_ms=options.max_latency_ms,
                                   cost=cost, drop=options.drop, queue_frames=options.queue_frames,
                                   on_drop=self._dropped)
        self.report = WatchReport(self.stats, [], fold, max_batch, options.max_latency_ms)
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self._warm = threading.Event()
        self._drop_lines = Throttle(DROP_LOG_EVERY_S)
        self.threads = [StreamReader(i, s, [r.view for r in readers], self.batcher, self.stop, self.stats[i],
                                     realtime=options.realtime, timeouts=options.timeouts,
                                     on_event=self._event_handler(i)) for i, s in enumerate(sources)]
        self.model_thread = threading.Thread(target=self._classify_all, name="watch-model", daemon=True)

    def _event_handler(self, stream: int) -> Callable[[str, int], None]:
        metrics = self.metrics

        def on_event(kind: str, count: int) -> None:
            if metrics is None:
                return
            if kind == "received":
                metrics.received[stream].inc(count)
            elif kind == "reconnect":
                metrics.reconnects[stream].inc(count)
            else:
                metrics.connected[stream].set(1 if kind == "connected" else 0)

        return on_event

    def _dropped(self, stream: int, reason: str, count: int) -> None:  # under the batcher's lock
        dropped = self.stats[stream].dropped
        dropped[reason] = dropped.get(reason, 0) + count
        self._drop_lines.count(count)
        if self.metrics is not None:
            self.metrics.drop(stream, reason, count)

    def start(self) -> None:
        """Time the models on the model thread (its first calls pay one-off costs, such as a thread pool), then
        open the streams."""
        self.model_thread.start()
        while not self._warm.wait(0.1) and self.model_thread.is_alive():
            pass
        if self.failure is not None:
            raise self.failure
        self.report.wall_seconds = time.perf_counter()
        for thread in self.threads:
            thread.start()

    def _classify_all(self) -> None:
        try:
            fold, largest = self.batcher.fold, self.batcher.max_batch
            self.batcher.cost = BatchCost(fold, sum(_time_batch(r, fold) for r in self.readers),
                                          sum(_time_batch(r, largest) for r in self.readers), largest)
            self._warm.set()
            while (batch := self.batcher.take()) is not None:
                self._classify(batch)
        except BaseException as exc:  # handed to the caller's thread, which stops the run and raises it
            self.failure = exc
            self.stop.set()
            self.batcher.discard()

    def _classify(self, batch: list[LiveFrame]) -> None:
        start = time.perf_counter()
        predictions = []
        for i, reader in enumerate(self.readers):
            preds = reader.predictor.predict_batch(np.stack([f.views[i] for f in batch]))
            predictions.append(list(zip(preds.labels.tolist(), preds.scores.tolist(), strict=True)))
        seconds = time.perf_counter() - start
        now = time.monotonic()
        touched: dict[int, float] = {}
        latencies: list[float] = []
        for j, item in enumerate(batch):
            latency = now - item.received_mono
            self.sink.write(item.stream, item.frame, item.pts, item.received, [p[j] for p in predictions], latency)
            touched[item.stream] = latency
            latencies.append(latency)
        self.sink.flush(list(touched))
        self.batcher.cost.observe(len(batch), seconds)  # after the rows: they wait for nothing
        padded = sum(-(-len(batch) // r.predictor.fold) * r.predictor.fold - len(batch) for r in self.readers)
        report = self.report
        report.batches += 1
        report.frames += len(batch)
        report.padded_slots += padded
        report.model_seconds += seconds
        by_stream: dict[int, list[float]] = {}
        for item, latency in zip(batch, latencies, strict=True):
            by_stream.setdefault(item.stream, []).append(latency)
        for stream, values in by_stream.items():
            self.stats[stream].classified += len(values)
            self.stats[stream].latency.add(values)
        if self.metrics is not None:
            self._observe(batch, padded, seconds, latencies, by_stream)
        self._log_drops()

    def _observe(self, batch: list[LiveFrame], padded: int, seconds: float, latencies: list[float],
                 by_stream: dict[int, list[float]]) -> None:
        metrics = self.metrics
        assert metrics is not None
        metrics.batch_images.observe(len(batch))
        metrics.batch_padded.observe(padded)
        metrics.compute.observe(seconds)
        for latency in latencies:
            metrics.frame_latency.observe(latency)
        for stream, values in by_stream.items():
            metrics.classified[stream].inc(len(values))
            metrics.lag[stream].set(values[-1])
        for stream in range(len(self.sources)):
            metrics.queued[stream].set(self.batcher.queued(stream))

    def _log_drops(self) -> None:
        dropped = self._drop_lines.due()
        if dropped:
            LOG.warning("watch: behind: %d frames dropped to keep --max-latency-ms %g (at most one such line "
                        "every %g s; metrics: foldedcnns_live_frames_dropped_total)", dropped,
                        self.options.max_latency_ms, DROP_LOG_EVERY_S)

    def running(self) -> bool:
        return self.model_thread.is_alive() and any(t.is_alive() for t in self.threads)

    def shutdown(self) -> None:
        """Stop reading, classify what is queued, flush, join every thread (see the module doc)."""
        self.stop.set()
        self.batcher.close()
        self.model_thread.join(timeout=DRAIN_TIMEOUT_S)
        if self.model_thread.is_alive():
            lost = self.batcher.discard()
            LOG.warning("watch: the models did not finish the queued frames within %g s; %d frames not classified",
                        DRAIN_TIMEOUT_S, lost)
            self.model_thread.join(timeout=DRAIN_TIMEOUT_S)
        for thread in self.threads:  # each ends within its read timeout (a stalled stream), at once otherwise
            thread.join(timeout=self.options.timeouts[1] + self.options.timeouts[0] + 1.0)
        self.report.wall_seconds = time.perf_counter() - self.report.wall_seconds if self._warm.is_set() else 0.0


def run_watch(target: str | Path, urls: Sequence[str], out: str | Path, *, engine: Engine | None = None,
              crop: Crop | str | None = None, batch_size: int | None = None, data: str | Path | None = None,
              options: WatchOptions | None = None, control: WatchControl | None = None) -> WatchReport:
    """Follow the streams ``urls`` with the models of ``target`` (a scrape SPEC, or a checkpoint with ``crop``)
    until they all end, ``control.stop()``, or SIGINT/SIGTERM; rows go to ``out/<stream>.jsonl`` (or stdout,
    ``-``, for one stream). Everything is checked, and the metrics port bound, before a stream is opened."""
    options = WatchOptions() if options is None else options
    control = WatchControl() if control is None else control
    sources = parse_streams(urls, options.realtime)
    outputs = stream_outputs([s.name for s in sources], out, options.overwrite)
    metrics = LiveMetrics([s.name for s in sources]) if options.metrics_port is not None else None
    try:
        if metrics is not None:
            control.metrics_port = metrics.start(options.metrics_port or 0, options.metrics_host)
        readers = watch_readers(target, engine=engine, crop=crop, batch_size=batch_size, data=data)
        names = None if readers[0].name is None else [str(r.name) for r in readers]
        with RowSink(outputs, [s.name for s in sources], names, [r.predictor.class_names for r in readers]) as sink:
            session = _Session(readers, sources, sink, options, metrics)
            session.report.metrics_port = control.metrics_port
            session.report.tasks = [{"name": r.name or "model", "fold": r.predictor.fold,
                                     "batch_size": r.predictor.batch_size, "backend": r.predictor.backend,
                                     "crop": None if r.crop is None else ",".join(map(str, r.crop))} for r in readers]
            try:
                session.start()
                control.ready.set()
                while session.running() and not control.stopping.wait(0.1):
                    pass
                if control.stopping.is_set():
                    session.report.stopped_by = "stop"
            except KeyboardInterrupt as exc:  # the first SIGINT/SIGTERM: stop as the server drains
                session.report.stopped_by = signal_name(exc)
            finally:
                session.shutdown()
            if session.failure is not None:
                raise session.failure
            return session.report
    finally:
        if metrics is not None:
            metrics.close()


__all__ = ["DEFAULT_MAX_LATENCY_MS", "WatchControl", "WatchOptions", "WatchReport", "run_watch"]
