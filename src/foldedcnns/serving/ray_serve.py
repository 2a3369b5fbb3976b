"""Scale out on Ray Serve: the same model and HTTP API as the native server, on replicas of a Ray cluster.

Each replica holds a :class:`~foldedcnns.inference.Predictor` and batches with ``@serve.batch``:
``max_batch_size`` is N images (a multiple of the fold f; requests are counted in images by
``batch_size_fn``, and a request larger than N is cut into pieces of at most N images), and
``batch_wait_timeout_s`` is D. A partial batch is padded by the project's one rule inside
``Predictor.predict_batch``. A request takes the native server's path: the same routes
(:data:`~foldedcnns.serving.service.ROUTES`), decoding (:func:`~foldedcnns.serving.decode.decode_request`)
and error answers (:func:`~foldedcnns.serving.errors.reply_for`). Ray's proxy sheds load past
``max_queued_requests`` (503).

Connection limits (:class:`~foldedcnns.serving.connections.ConnectionLimits`): a replica reads a body with
the native server's body timeouts (408 for a body that stalls ``body_timeout_s`` or takes longer than
``upload_timeout_s``); Ray's proxy gets ``keep_alive_s`` as its keep-alive and bounds a whole request by
``upload_timeout_s`` plus :data:`REQUEST_MARGIN_S` (its ``request_timeout_s``). The head timeout and the
connection cap are the native server's own: Ray's proxy has neither.

Differences from the native server: no ``--isolate-requests`` and no per-request deadline (Ray Serve
has its own request timeout, ``RAY_SERVE_REQUEST_PROCESSING_TIMEOUT_S``), ``/metrics`` is Ray's own
(the Ray metrics export port), not this package's, and ``/readyz`` is ``/healthz`` (Ray tracks which
replicas are ready). The checkpoint is read by path on every replica, so on a cluster it must be on a
shared file system, and every node needs foldedcnns installed. The engine is settled on the driver:
int8 calibrated once (its images travel with the engine), threads default to the replica's CPU share,
and each replica on a GPU gets one of its own (so ``--device cuda``, not an index).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldedcnns.errors import ConfigError
from foldedcnns.inference.predictor import Predictor
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime.checkpoint import load_checkpoint
from foldedcnns.runtime.engine import Engine
from foldedcnns.serving.batcher import DEFAULT_DELAY_MS, DEFAULT_QUEUE_IMAGES, batch_images, check_request_images
from foldedcnns.serving.connections import ConnectionLimits, Gate, timed_chunks
from foldedcnns.serving.decode import decode_request
from foldedcnns.serving.errors import Reply, error_reply, reply_for
from foldedcnns.serving.limits import RequestBudget
from foldedcnns.serving.service import ROUTES, find_route, load_predictor, model_info, predictions_json

APP_NAME = "foldedcnns"
DEFAULT_REPLICA_CPUS = 1.0
REPLICA_ROUTES = tuple(r for r in ROUTES if r.endpoint != "metrics")  # /metrics is Ray's own
REQUEST_MARGIN_S = 30.0  # the proxy's whole-request bound: the upload's, plus this for queueing and the model


def _import_serve() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ConfigError("--ray needs Ray Serve; install it with: pip install 'foldedcnns[ray,serve]'") from exc
    return ray, serve


class Replica:
    """The endpoints of one replica, free of Ray: :func:`build_application` deploys a subclass whose
    :meth:`classify` is batched across requests by ``@serve.batch``."""

    def __init__(self, predictor: Predictor, *, max_batch_images: int, max_delay_ms: float = DEFAULT_DELAY_MS,
                 max_queue_images: int = DEFAULT_QUEUE_IMAGES, budget: RequestBudget | None = None,
                 limits: ConnectionLimits | None = None) -> None:
        self.predictor, self.budget = predictor, budget or RequestBudget()
        self.max_batch_images, self.max_delay_ms = max_batch_images, max_delay_ms
        self.max_queue_images = max_queue_images
        self.limits, self.gate = limits or ConnectionLimits(), Gate()  # no drain here: Ray's own shutdown

    async def classify(self, images: np.ndarray) -> list[dict[str, Any]]:
        """One piece of at most N images, alone (the deployment's override batches pieces of many requests)."""
        return (await self.classify_many([images]))[0]

    async def classify_many(self, chunks: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        """One model batch of the pieces ``chunks``, off the event loop; the answer rows of each piece."""
        batch = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        preds = await asyncio.get_running_loop().run_in_executor(None, self.predictor.predict_batch, batch)
        rows = predictions_json(preds)
        out, start = [], 0
        for chunk in chunks:
            out.append(rows[start:start + len(chunk)])
            start += len(chunk)
        return out

    async def predict(self, headers: Mapping[str, str], chunks: AsyncIterator[bytes],
                      query: Mapping[str, str]) -> Reply:
        try:
            images = await decode_request(headers, timed_chunks(chunks, self.limits, self.gate), query,
                                          self.predictor.input_hw, budget=self.budget,
                                          admit=lambda n: check_request_images(n, self.max_queue_images))
            n = self.max_batch_images
            parts = await asyncio.gather(*(self.classify(images[i:i + n]) for i in range(0, len(images), n)))
            return Reply(200, {"predictions": [row for part in parts for row in part]})
        except Exception as exc:  # an error status; a model fault is this request's answer, the replica goes on
            return reply_for(exc)

    def model(self) -> Reply:
        batcher = {"ray_serve": True, "max_batch_images": self.max_batch_images, "max_delay_ms": self.max_delay_ms}
        return Reply(200, {**model_info(self.predictor), "batcher": batcher})

    def healthz(self) -> Reply:
        return Reply(200, {"status": "ok"})

    def readyz(self) -> Reply:
        return self.healthz()

    async def answer(self, request: Any) -> Reply:
        """The reply to a Starlette ``request`` by :data:`REPLICA_ROUTES`; 404 for any other method or path."""
        route = find_route(REPLICA_ROUTES, request.method, request.url.path)
        if route is None:
            path = request.url.path.rstrip("/") or "/"
            return error_reply(404, f"{request.method} {path}: not found (Ray Serve path: "
                                    f"{', '.join(r.path for r in REPLICA_ROUTES)})")
        if route.endpoint == "predict":
            return await self.predict(request.headers, request.stream(), request.query_params)
        return getattr(self, route.endpoint)()


def replica_engine(engine: Engine, replica_cpus: float) -> Engine:
    """The engine a replica runs: ``threads`` default to its CPU share; a GPU is the one Ray gives it."""
    device = engine.device
    if device.startswith("cuda:") and device != "cuda:0":
        raise ConfigError(f"on Ray Serve each replica uses the one GPU Ray gives it: pass --device cuda, not {device}")
    return engine.replace(threads=engine.threads or max(1, round(replica_cpus)))


def build_application(checkpoint: str | Path, *, engine: Engine | None = None, data: str | Path | None = None,
                      replicas: int = 1, replica_cpus: float = DEFAULT_REPLICA_CPUS,
                      max_batch_images: int | None = None, max_delay_ms: float = DEFAULT_DELAY_MS,
                      max_queue_images: int = DEFAULT_QUEUE_IMAGES, budget: RequestBudget | None = None,
                      limits: ConnectionLimits | None = None) -> Any:
    """The bound Ray Serve application (``serve.run`` it); one replica class per call. ``engine`` defaults
    to eager fp32 on the CPU; int8 is calibrated here, once, on ``data`` unless it carries its calibration.
    ``limits``: the replicas' body timeouts (default :class:`ConnectionLimits`); ``budget``: what one request
    may cost (default :class:`RequestBudget`)."""
    _, serve = _import_serve()
    checkpoint = str(Path(checkpoint).resolve())
    config = ModelConfig.from_dict(load_checkpoint(checkpoint)["model_config"])
    n = batch_images(config.fold, max_batch_images)
    engine = replica_engine((engine or Engine()).for_deployment(config.task, data), replica_cpus)
    on_gpu = engine.device.startswith("cuda") or (engine.device == "auto" and torch.cuda.is_available())

    def count_images(items: list[np.ndarray]) -> int:
        return sum(len(item) for item in items)

    @serve.deployment(name="FoldedCNN", num_replicas=replicas, max_ongoing_requests=2 * n,
                      max_queued_requests=max_queue_images,
                      ray_actor_options={"num_cpus": replica_cpus, "num_gpus": 1 if on_gpu else 0})
    class FoldedReplica(Replica):
        def __init__(self) -> None:
            torch.set_num_threads(engine.threads)
            super().__init__(load_predictor(checkpoint, engine=engine, max_batch_images=n), max_batch_images=n,
                             max_delay_ms=max_delay_ms, max_queue_images=max_queue_images, budget=budget,
                             limits=limits)
            # then once for the replica's life, so no batch changes it (Engine.pytorch_threads)
            torch.set_num_threads(self.predictor.engine.pytorch_threads or engine.threads)

        @serve.batch(max_batch_size=n, batch_wait_timeout_s=max_delay_ms / 1000.0, batch_size_fn=count_images)
        async def classify(self, chunks: list[np.ndarray]) -> list[list[dict[str, Any]]]:
            return await self.classify_many(chunks)

        async def __call__(self, request: Any) -> Any:
            from starlette.responses import JSONResponse

            reply = await self.answer(request)
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    return FoldedReplica.bind()


def proxy_options(host: str, port: int, limits: ConnectionLimits) -> dict[str, Any]:
    """Ray Serve's ``http_options`` for ``limits`` (see the module doc)."""
    return {"host": host, "port": port, "keep_alive_timeout_s": max(1, round(limits.keep_alive_s)),
            "request_timeout_s": limits.upload_timeout_s + REQUEST_MARGIN_S}


def serve_ray(checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
              num_cpus: int | None = None, limits: ConnectionLimits | None = None, **options: Any) -> int:
    """Start (or join) Ray, deploy the application on ``host:port``, serve until SIGTERM/SIGINT, shut down."""
    ray, serve = _import_serve()
    limits = limits or ConnectionLimits()
    app = build_application(checkpoint, limits=limits, **options)  # checks the checkpoint and N before Ray starts
    stop = threading.Event()
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=False)
    # After ray.init, which installs handlers of its own that end the driver at once.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options=proxy_options(host, port, limits))
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"foldedcnns: serving on Ray Serve ({options.get('replicas', 1)} replicas) at http://{host}:{port}",
              flush=True)
        while not stop.wait(0.5):
            pass
        started = time.monotonic()
        serve.shutdown()
        print(f"foldedcnns: Ray Serve shut down in {time.monotonic() - started:.1f} s", flush=True)
    finally:
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
