"""Prometheus metrics of the server (``GET /metrics``), on a registry of its own.

* ``foldedcnns_requests_total{status}``, ``foldedcnns_images_total{status}``: answered requests and
  their images by HTTP status;
* ``foldedcnns_request_seconds``: latency from arrival to answer; ``foldedcnns_queue_seconds``: from
  queueing to being taken into a batch; ``foldedcnns_compute_seconds``: one batch on the model;
* ``foldedcnns_batch_images``, ``foldedcnns_batch_padded_slots``, ``foldedcnns_batch_requests``:
  per batch, the real images, the padded slots of the fold groups, and the requests it served;
* ``foldedcnns_queue_images``: images waiting; ``foldedcnns_inflight_requests``: requests accepted
  and not yet answered; ``foldedcnns_ready``: 1 until a drain starts;
* ``foldedcnns_open_connections``: HTTP connections open; ``foldedcnns_connections_refused_total``:
  connections refused on arrival past ``--max-connections``; ``foldedcnns_connections_cut_total{reason}``:
  connections closed by the server before a whole request head arrived (``header_timeout``,
  ``head_too_large``); a connection upgraded to a WebSocket counts as a stream from then on;
* ``foldedcnns_open_streams``: WebSocket streams (``/v1/stream``) open; ``foldedcnns_stream_frames_total{status}``:
  their frames answered, by the status a POST would get; ``foldedcnns_stream_frame_seconds``: a frame's arrival
  to its answer; ``foldedcnns_stream_inflight_frames``: frames read and not yet answered (at most the window per
  stream); ``foldedcnns_stream_window_full_total``: times a stream's window was full, so the server stopped
  reading it until an answer went out (backpressure).

A client that disconnects before its body is read is counted as ``status="499"`` (never sent); a body
cut by ``--body-timeout-s`` / ``--upload-timeout-s`` as ``status="408"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.serving.batcher import Observer

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PAD_BUCKETS = (0, 1, 2, 3, 4, 8, 16, 64)


def require(module: str, what: str = "serving") -> Any:
    """Import an optional dependency of the ``serve`` extra, or a one-line ConfigError saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{what} needs {module.split('.')[0]}; install it with: pip install 'foldedcnns[serve]'"
                          ) from exc


class ServingMetrics(Observer):
    """The server's Prometheus metrics; also the batcher's :class:`Observer`."""

    def __init__(self) -> None:
        prom = require("prometheus_client", "/metrics")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        kw = {"registry": self.registry, "namespace": "foldedcnns"}
        self.requests = prom.Counter("requests", "Answered requests by HTTP status", ["status"], **kw)
        self.images = prom.Counter("images", "Images of answered requests by HTTP status", ["status"], **kw)
        self.latency = prom.Histogram("request_seconds", "Arrival to answer", buckets=LATENCY_BUCKETS, **kw)
        self.queue = prom.Histogram("queue_seconds", "Queued until taken into a batch", buckets=LATENCY_BUCKETS,
                                    **kw)
        self.compute = prom.Histogram("compute_seconds", "One batch on the model", buckets=LATENCY_BUCKETS, **kw)
        self.batch_images = prom.Histogram("batch_images", "Real images per batch", buckets=SIZE_BUCKETS, **kw)
        self.batch_padded = prom.Histogram("batch_padded_slots", "Padded fold slots per batch", buckets=PAD_BUCKETS,
                                           **kw)
        self.batch_requests = prom.Histogram("batch_requests", "Requests served per batch", buckets=SIZE_BUCKETS,
                                             **kw)
        self.queue_images = prom.Gauge("queue_images", "Images waiting for a batch", **kw)
        self.inflight = prom.Gauge("inflight_requests", "Requests accepted and not yet answered", **kw)
        self.ready = prom.Gauge("ready", "1 while the server takes new requests", **kw)
        self.ready.set(1)
        self.connections = prom.Gauge("open_connections", "HTTP connections open", **kw)
        self.refused = prom.Counter("connections_refused", "Connections refused on arrival (--max-connections)",
                                    **kw)
        self.cut = prom.Counter("connections_cut", "Connections closed before a whole request head arrived",
                                ["reason"], **kw)
        self.streams = prom.Gauge("open_streams", "WebSocket streams open", **kw)
        self.frames = prom.Counter("stream_frames", "WebSocket frames answered by status", ["status"], **kw)
        self.frame_latency = prom.Histogram("stream_frame_seconds", "WebSocket frame: arrival to answer",
                                            buckets=LATENCY_BUCKETS, **kw)
        self.frames_inflight = prom.Gauge("stream_inflight_frames", "WebSocket frames read and not yet answered",
                                          **kw)
        self.window_full = prom.Counter("stream_window_full", "Times a stream's window was full and its reading "
                                        "paused", **kw)
        self._children: dict[tuple[int, int], Any] = {}  # the hot path: no label lookup per request or frame

    # Connection hooks (called on the event loop by the server's protocol)
    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self) -> None:
        self.connections.dec()

    def connection_refused(self) -> None:
        self.refused.inc()

    def connection_cut(self, reason: str) -> None:
        self.cut.labels(reason).inc()

    def follow(self, inflight: Callable[[], int], queued_images: Callable[[], int]) -> None:
        """Read the in-flight requests and the queued images when /metrics is scraped, not at every change."""
        self.inflight.set_function(inflight)
        self.queue_images.set_function(queued_images)

    # Observer hooks (called on the event loop by the batcher)
    def queue_wait(self, seconds: float) -> None:
        self.queue.observe(seconds)

    def batch(self, images: int, padded: int, requests: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.batch_padded.observe(padded)
        self.batch_requests.observe(requests)
        self.compute.observe(seconds)

    def _by_status(self, counter: Any, status: int) -> Any:
        """``counter.labels(str(status))``, looked up once per counter and status."""
        key = (id(counter), status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(str(status))
        return child

    def answered(self, status: int, images: int, seconds: float) -> None:
        self._by_status(self.requests, status).inc()
        self._by_status(self.images, status).inc(images)
        self.latency.observe(seconds)

    # Stream hooks (called on the event loop by foldedcnns.serving.stream)
    def stream_opened(self) -> None:
        self.streams.inc()

    def stream_closed(self, unanswered: int = 0) -> None:
        self.streams.dec()
        if unanswered:
            self.frames_inflight.dec(unanswered)

    def frame_read(self) -> None:
        self.frames_inflight.inc()

    def frame_answered(self, status: int, seconds: float) -> None:
        self._by_status(self.frames, status).inc()
        self.frame_latency.observe(seconds)

    def frame_sent(self) -> None:
        self.frames_inflight.dec()

    def stream_window_full(self) -> None:
        self.window_full.inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
