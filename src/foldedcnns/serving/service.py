"""``Service``: the server's endpoints as plain async methods, free of any web framework.

The HTTP layer (:mod:`foldedcnns.serving.http`) turns a :class:`Reply` into a response; the same
service runs under any ASGI server. A request's life: refused at once while draining (503) or, from
its headers, with the body unread, while the queue has no room (503); body read up to the size limit
(413); media type checked (415); declared sizes checked before decoding (413, :mod:`~.decode`), room
checked again for its image count (503), its deadline checked (504); decoded and resized on a decode
thread in slices (400); queued in the :class:`~foldedcnns.serving.batcher.DynamicBatcher` (503 when
full, 504 past its deadline, 500 when its batch fails); answered with one ``{label, class_name, score}``
per image. WebSocket frames (:mod:`~foldedcnns.serving.stream`) take the same path, one frame at a time.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foldedcnns.inference.predictor import Predictions, Predictor
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime.checkpoint import load_checkpoint
from foldedcnns.runtime.engine import Engine
from foldedcnns.serving.batcher import (
    DEFAULT_DELAY_MS,
    DEFAULT_QUEUE_IMAGES,
    DynamicBatcher,
    batch_images,
    describe,
)
from foldedcnns.serving.decode import decode_request
from foldedcnns.serving.errors import BadRequest, Reply, ShuttingDown, error_reply, reply_for
from foldedcnns.serving.limits import RequestBudget
from foldedcnns.serving.metrics import ServingMetrics

LOG = logging.getLogger("foldedcnns.serving")
TIMEOUT_HEADER = "x-request-timeout-ms"  # a client's own deadline, in ms (the smaller of it and the server's)
DECODE_THREADS = 2


@dataclass(frozen=True)
class Route:
    """One endpoint of the HTTP API: ``method path`` answered by the server's method named ``endpoint``."""

    path: str
    method: str
    endpoint: str


# The HTTP API, one table for both servers (the Ray Serve replica answers all but /metrics, which is Ray's own).
ROUTES: tuple[Route, ...] = (Route("/v1/predict", "POST", "predict"), Route("/v1/model", "GET", "model"),
                             Route("/healthz", "GET", "healthz"), Route("/readyz", "GET", "readyz"),
                             Route("/metrics", "GET", "metrics"))


def find_route(routes: tuple[Route, ...], method: str, path: str) -> Route | None:
    """The route of ``method path`` (a trailing ``/`` ignored), or None."""
    path = path.rstrip("/") or "/"
    return next((r for r in routes if r.path == path and r.method == method), None)


def predictions_json(preds: Predictions) -> list[dict[str, Any]]:
    """One ``{label, class_name, score}`` per image."""
    names = preds.class_names
    return [{"label": int(label), "class_name": names[int(label)], "score": float(score)}
            for label, score in zip(preds.labels.tolist(), preds.scores.tolist(), strict=True)]


def predictions_body(preds: Predictions) -> bytes:
    """``{"predictions": predictions_json(preds)}`` as compact UTF-8 JSON, the bytes ``json.dumps`` would give in
    half its time (no dict per image; every answer of the server goes through here). A score that is not
    finite is a ValueError, as in ``json.dumps(..., allow_nan=False)``."""
    if not np.isfinite(preds.scores).all():
        raise ValueError(f"the model gave scores that are not finite: {preds.scores.tolist()[:4]}")
    names = _json_strings(tuple(preds.class_names))
    rows = ",".join(f'{{"label":{label},"class_name":{names[label]},"score":{score!r}}}'
                    for label, score in zip(preds.labels.tolist(), preds.scores.tolist(), strict=True))
    return f'{{"predictions":[{rows}]}}'.encode()


@functools.lru_cache(maxsize=16)
def _json_strings(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(json.dumps(name, ensure_ascii=False) for name in names)


def model_info(predictor: Predictor) -> dict[str, Any]:
    config = predictor.config
    return {"task": config.task.name, "fold": predictor.fold, "classes": list(predictor.class_names),
            "input_size": {"height": predictor.height, "width": predictor.width, "channels": 3},
            "backend": predictor.backend, "precision": predictor.precision, "device": str(predictor.device)}


class Service:
    """Endpoints of one model: ``predict``, ``model``, ``healthz``, ``readyz``, ``metrics``; and the drain."""

    def __init__(self, predictor: Predictor, batcher: DynamicBatcher, metrics: ServingMetrics, *,
                 budget: RequestBudget | None = None) -> None:
        self.predictor, self.batcher, self.metrics = predictor, batcher, metrics
        self.budget = budget or RequestBudget()
        self.inflight = 0
        self.streams = 0  # WebSocket streams open (stream.py); a drain waits until they have closed
        self.draining = False
        self.drain_started = asyncio.Event()  # set by begin_drain: a stream stops reading and closes
        self.decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="foldedcnns-decode")
        batcher.alone = self._alone  # a lone small batch runs on the event loop (batcher module doc)
        metrics.follow(lambda: self.inflight, lambda: batcher.queued_images)

    def _alone(self) -> bool:
        """One request in flight and no stream (a stream's frames come in windows): nothing else to serve while
        its model call runs."""
        return self.inflight <= 1 and self.streams == 0

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.close()
        self.decoder.shutdown(wait=True)

    def begin_drain(self) -> None:
        """Turn /readyz false and refuse new requests (503); accepted ones still run, without waiting for D;
        streams stop reading, answer what they read and close."""
        if not self.draining:
            self.draining = True
            self.metrics.ready.set(0)
            LOG.warning("draining: %d requests in flight, %d streams open", self.inflight, self.streams)
            self.drain_started.set()
            self.batcher.flush()

    @property
    def drained(self) -> bool:
        return self.draining and self.inflight == 0 and self.streams == 0

    async def predict(self, headers: Mapping[str, str], chunks: AsyncIterator[bytes],
                      query: Mapping[str, str]) -> Reply:
        arrived, loop = time.perf_counter(), asyncio.get_running_loop()
        arrived_loop = loop.time()
        if self.draining:
            reply = error_reply(503, "the server is shutting down; retry on another replica", ShuttingDown.retry_after)
            self.metrics.answered(reply.status, 0, time.perf_counter() - arrived)
            return reply
        self.inflight += 1
        images = 0
        try:
            deadline = self.request_timeout(headers)
            self.admit(1)  # from the headers alone: no room for even one image is 503 with the body unread
            batch = await self.decode(headers, chunks, query, admit=self.admit,
                                      deadline=None if deadline is None else arrived_loop + deadline)
            images = len(batch)
            preds = await self.batcher.submit(batch, timeout_s=deadline, arrived=arrived_loop)
            reply = Reply(200, predictions_body(preds))
        except Exception as exc:  # an error status; a bug answers 500 with the reason and the server goes on
            reply = reply_for(exc)
        finally:
            self.inflight -= 1
        self.metrics.answered(reply.status, images, time.perf_counter() - arrived)
        return reply

    async def decode(self, headers: Mapping[str, str], chunks: AsyncIterator[bytes], query: Mapping[str, str], *,
                     admit: Callable[[int], None], deadline: float | None) -> np.ndarray:
        """A body's images at the model's size on the decode threads (:func:`~.decode.decode_request`)."""
        return await decode_request(headers, chunks, query, self.predictor.input_hw, budget=self.budget,
                                    executor=self.decoder, admit=admit, deadline=deadline)

    def admit(self, images: int) -> None:
        """Refuse a request of ``images`` images the queue has no room for now, before its body is read (one
        image, from the headers) or decoded (its count, from the .npy header or the multipart parts): 503 with
        ``Retry-After`` (:class:`QueueFull`; :class:`ShuttingDown` once the batcher closes), 413 when it could
        never fit. The batcher checks again when the images are submitted."""
        self.batcher.check_room(images)

    def request_timeout(self, headers: Mapping[str, str]) -> float | None:
        """The request's deadline in seconds: the server's ``--request-timeout-ms`` or the client's header."""
        server = self.batcher.request_timeout
        text = headers.get(TIMEOUT_HEADER)
        if text is None:
            return server
        try:
            client = float(text) / 1000.0
        except ValueError:
            client = -1.0
        if not client > 0:
            raise BadRequest(f"header X-Request-Timeout-Ms must be a positive number of milliseconds, got {text!r}")
        return client if server is None else min(client, server)

    def model(self) -> Reply:
        return Reply(200, {**model_info(self.predictor), "batcher": describe(self.batcher)})

    def healthz(self) -> Reply:
        return Reply(200, {"status": "ok"})

    def readyz(self) -> Reply:
        if self.draining:
            return error_reply(503, "draining: the server is shutting down")
        return Reply(200, {"status": "ready", "queue_images": self.batcher.queued_images, "inflight": self.inflight})


def build_service(checkpoint: str | Path, *, engine: Engine | None = None, data: str | Path | None = None,
                  max_batch_images: int | None = None, max_delay_ms: float = DEFAULT_DELAY_MS,
                  max_queue_images: int = DEFAULT_QUEUE_IMAGES, request_timeout_ms: float | None = None,
                  isolate_requests: bool = False, budget: RequestBudget | None = None) -> Service:
    """Load ``checkpoint`` into a :class:`Predictor` on ``engine`` (default: eager fp32 on the CPU) whose
    batch is N images, warm it up, wrap it in a Service. int8 is calibrated on ``data`` unless ``engine``
    carries its calibration (:meth:`Engine.for_deployment`)."""
    predictor = load_predictor(checkpoint, engine=engine, data=data, max_batch_images=max_batch_images)
    metrics = ServingMetrics()
    batcher = DynamicBatcher(predictor, max_batch_images=predictor.batch_size, max_delay_ms=max_delay_ms,
                             max_queue_images=max_queue_images, isolate_requests=isolate_requests,
                             request_timeout_ms=request_timeout_ms, observer=metrics)
    return Service(predictor, batcher, metrics, budget=budget)


def load_predictor(checkpoint: str | Path, *, engine: Engine | None = None, data: str | Path | None = None,
                   max_batch_images: int | None = None) -> Predictor:
    """A Predictor on ``engine`` (int8 calibrated once, by :meth:`Engine.for_deployment` on ``data``) prepared
    for batches of N images (``max_batch_images``, a multiple of the fold; default 64 rounded up to one) and,
    on a static-shape engine, for the smaller batches a server forms (``partial_batches``: a batch of 4 runs
    at its own size, not padded to N), run once on f images so the first request does not pay for a
    compilation."""
    saved = load_checkpoint(checkpoint)
    config = ModelConfig.from_dict(saved["model_config"])
    engine = (engine or Engine()).for_deployment(config.task, data)
    predictor = Predictor(saved, engine=engine, batch_size=batch_images(config.fold, max_batch_images),
                          partial_batches=True)
    predictor.predict_batch(np.zeros((config.fold, *predictor.input_hw, 3), np.uint8))
    return predictor
