"""What ``foldedcnns watch`` writes: JSON-lines rows per stream, its counters, the Prometheus metrics.

Rows (:class:`RowSink`): one JSON object a line, ``stream, frame, pts, received`` (the frame's decoding
time, Unix seconds), the prediction columns of ``predict`` (``label, class_name, score``) or of ``scrape``
(``<name>_label, <name>_class, <name>_score`` per task), then ``latency_ms`` (decoded to row). Each file is
flushed after every batch that gave it rows, so a reader tailing it sees them at once; the files are live
logs, written in place (an existing one is refused unless ``overwrite``).

Metrics (:class:`LiveMetrics`, ``--metrics-port``), in the server's naming style (``foldedcnns_*``, on a
registry of their own):

* per stream (label ``stream``): ``foldedcnns_live_frames_received_total``, ``..._classified_total``,
  ``foldedcnns_live_frames_dropped_total{stream,reason}`` (``late``: it could not make
  ``--max-latency-ms``; ``queue_full``: its stream's queue was full), ``foldedcnns_live_reconnects_total``,
  ``foldedcnns_live_connected`` (1 while the stream is open), ``foldedcnns_live_lag_seconds`` (the latency
  of the stream's newest row), ``foldedcnns_live_queue_frames`` (frames waiting);
* per batch: ``foldedcnns_live_batch_images`` (real frames), ``foldedcnns_live_batch_padded_slots`` (fold
  slots padded, summed over the models), ``foldedcnns_live_compute_seconds`` (the models' time) and
  ``foldedcnns_live_frame_seconds`` (each frame's latency).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from foldedcnns.errors import ConfigError
from foldedcnns.inference.csvout import prediction_columns
from foldedcnns.utils.outputs import check_output

JSONL_SUFFIX = ".jsonl"
STDOUT = "-"
SCORE_DIGITS = 6
# Latency histogram of the summary: log-spaced bins from 0.1 ms to 1000 s (bounded memory whatever runs).
_BINS = np.concatenate([[0.0], np.logspace(-4, 3, 281)])
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PAD_BUCKETS = (0, 1, 2, 3, 4, 8, 16, 64)


class LatencyHistogram:
    """Counts of latencies in fixed log-spaced bins (memory bounded however long a stream runs);
    quantiles are read at the upper edge of their bin (within 6 %)."""

    def __init__(self) -> None:
        self.counts = np.zeros(len(_BINS), np.int64)
        self.largest = 0.0

    def add(self, seconds: Sequence[float]) -> None:
        values = np.asarray(seconds, float)
        if values.size:
            np.add.at(self.counts, np.clip(np.searchsorted(_BINS, values), 0, len(_BINS) - 1), 1)
            self.largest = max(self.largest, float(values.max()))

    def quantile(self, q: float) -> float | None:
        total = int(self.counts.sum())
        if not total:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q * total)))
        return min(float(_BINS[min(index, len(_BINS) - 1)]), self.largest)


@dataclass
class StreamStats:
    """One stream's counters (the summary; the metrics follow the same events)."""

    name: str
    url: str
    output: str = ""
    received: int = 0
    classified: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    damaged_packets: int = 0
    status: str = "starting"  # open, reconnecting, ended, failed, stopped
    error: str | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def to_dict(self) -> dict[str, Any]:
        p50, p99 = self.latency.quantile(0.5), self.latency.quantile(0.99)
        return {"stream": self.name, "url": self.url, "output": self.output, "received": self.received,
                "classified": self.classified, "dropped": sum(self.dropped.values()),
                "dropped_by_reason": dict(self.dropped), "reconnects": self.reconnects,
                "damaged_packets": self.damaged_packets, "status": self.status, "error": self.error,
                "latency_p50_ms": None if p50 is None else round(p50 * 1000, 2),
                "latency_p99_ms": None if p99 is None else round(p99 * 1000, 2),
                "latency_max_ms": round(self.latency.largest * 1000, 2)}


def stream_outputs(names: Sequence[str], out: str | Path, overwrite: bool) -> list[str]:
    """Where each stream's rows go: ``out/<name>.jsonl``, or stdout (``-``) for one stream; checked before
    any work (an existing file is refused unless ``overwrite``)."""
    if str(out) == STDOUT:
        if len(names) != 1:
            raise ConfigError(f"--out - writes one stream's rows to stdout; {len(names)} streams need --out DIR")
        return [STDOUT]
    folder = check_output(out, overwrite=True, folder=True)
    if folder.suffix.lower() == JSONL_SUFFIX:
        raise ConfigError(f"watch writes one <stream>.jsonl per stream into a folder; pass --out DIR, not {out}")
    return [str(check_output(folder / f"{name}{JSONL_SUFFIX}", overwrite=overwrite)) for name in names]


class RowSink:
    """The JSON-lines files of the streams (see the module doc); ``names`` are the models' names (None: one
    unnamed model, ``predict``'s columns); a context manager that closes the files."""

    def __init__(self, outputs: Sequence[str], stream_names: Sequence[str], names: Sequence[str] | None,
                 class_names: Sequence[Sequence[str]]) -> None:
        self.outputs, self.stream_names = list(outputs), list(stream_names)
        columns = prediction_columns(names)
        self._columns = [columns[3 * i:3 * i + 3] for i in range(len(class_names))]
        self._class_names = [tuple(c) for c in class_names]
        self._files: list[IO[str] | None] = [None] * len(outputs)

    def __enter__(self) -> RowSink:
        for i, output in enumerate(self.outputs):
            if output == STDOUT:
                self._files[i] = sys.stdout
            else:
                Path(output).parent.mkdir(parents=True, exist_ok=True)
                self._files[i] = open(output, "w", encoding="utf-8")
        return self

    def write(self, stream: int, frame: int, pts: float | None, received: float,
              predictions: Sequence[tuple[int, float]], latency_s: float) -> None:
        """One row (not flushed: :meth:`flush` after the batch)."""
        row: dict[str, Any] = {"stream": self.stream_names[stream], "frame": frame,
                               "pts": None if pts is None else round(pts, 6), "received": round(received, 6)}
        for (c_label, c_class, c_score), names, (label, score) in zip(self._columns, self._class_names,
                                                                      predictions, strict=True):
            row[c_label], row[c_class], row[c_score] = label, names[label], round(score, SCORE_DIGITS)
        row["latency_ms"] = round(latency_s * 1000, 3)
        handle = self._files[stream]
        assert handle is not None
        handle.write(json.dumps(row, separators=(",", ":")) + "\n")

    def flush(self, streams: Sequence[int]) -> None:
        for stream in streams:
            handle = self._files[stream]
            if handle is not None:
                handle.flush()

    def __exit__(self, *exc: Any) -> None:
        for i, handle in enumerate(self._files):
            if handle is not None and handle is not sys.stdout:
                handle.close()
            elif handle is not None:
                handle.flush()
            self._files[i] = None


def _prometheus() -> Any:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError as exc:
        raise ConfigError("--metrics-port needs prometheus_client; install it with: pip install "
                          "'foldedcnns[serve]'") from exc


class LiveMetrics:
    """The Prometheus metrics of the module doc, served on ``host:port`` by :meth:`start` until :meth:`close`."""

    def __init__(self, stream_names: Sequence[str]) -> None:
        prom = _prometheus()
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        kw = {"registry": self.registry, "namespace": "foldedcnns", "subsystem": "live"}
        s = ["stream"]
        received = prom.Counter("frames_received", "Frames decoded from the stream", s, **kw)
        classified = prom.Counter("frames_classified", "Frames classified (a row written)", s, **kw)
        self.dropped = prom.Counter("frames_dropped", "Frames dropped, by reason (late, queue_full)",
                                    [*s, "reason"], **kw)
        reconnects = prom.Counter("reconnects", "Times the stream was reopened", s, **kw)
        connected = prom.Gauge("connected", "1 while the stream is open", s, **kw)
        lag = prom.Gauge("lag_seconds", "Latency (decoded to row) of the stream's newest row", s, **kw)
        queued = prom.Gauge("queue_frames", "Frames of the stream waiting for a batch", s, **kw)
        self.batch_images = prom.Histogram("batch_images", "Real frames per batch", buckets=SIZE_BUCKETS, **kw)
        self.batch_padded = prom.Histogram("batch_padded_slots", "Padded fold slots per batch (all models)",
                                           buckets=PAD_BUCKETS, **kw)
        self.compute = prom.Histogram("compute_seconds", "One batch on the models", buckets=LATENCY_BUCKETS, **kw)
        self.frame_latency = prom.Histogram("frame_seconds", "A frame's decoding to its row",
                                            buckets=LATENCY_BUCKETS, **kw)
        # children looked up once: no label lookup per frame
        self.received = [received.labels(n) for n in stream_names]
        self.classified = [classified.labels(n) for n in stream_names]
        self.reconnects = [reconnects.labels(n) for n in stream_names]
        self.connected = [connected.labels(n) for n in stream_names]
        self.lag = [lag.labels(n) for n in stream_names]
        self.queued = [queued.labels(n) for n in stream_names]
        self.names = list(stream_names)
        self._server: Any = None
        self._thread: Any = None

    def drop(self, stream: int, reason: str, count: int) -> None:
        self.dropped.labels(self.names[stream], reason).inc(count)

    def start(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``GET /metrics`` on ``host:port`` (0: a free port) in a thread; returns the port. A port in
        use is a one-line ConfigError."""
        try:
            self._server, self._thread = self._prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"--metrics-port: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                              "choose another port (0 picks a free one)") from None
        return int(self._server.server_address[1])

    def render(self) -> bytes:
        return bytes(self._prom.generate_latest(self.registry))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5.0)
            self._server = self._thread = None
