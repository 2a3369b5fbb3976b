"""Scale out on Ray Serve: the same model and HTTP API as the native server, on replicas of a Ray cluster.

Each replica holds a :class:`~foldedcnns.inference.Predictor` and batches with ``@serve.batch``:
``max_batch_size`` is N images (a multiple of the fold f; requests are counted in images by
``batch_size_fn``, and a request larger than N is cut into pieces of at most N images), and
``batch_wait_timeout_s`` is D. A partial batch is padded by the project's one rule inside
``Predictor.predict_batch``. Requests are decoded by :mod:`foldedcnns.serving.decode`, exactly as on
the native server. Ray's proxy sheds load past ``max_queued_requests`` (503).

Differences from the native server: no ``--isolate-requests`` and no per-request deadline (Ray Serve
has its own request timeout, ``RAY_SERVE_REQUEST_PROCESSING_TIMEOUT_S``), and ``/metrics`` is Ray's own
(the Ray metrics export port), not this package's. The checkpoint is read by path on every replica,
so on a cluster it must be on a shared file system, and every node needs foldedcnns installed.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldedcnns.errors import ConfigError, FoldedCNNsError, first_line
from foldedcnns.models.registry import ModelConfig
from foldedcnns.runtime.checkpoint import load_checkpoint
from foldedcnns.serving.batcher import DEFAULT_DELAY_MS, DEFAULT_QUEUE_IMAGES, batch_images
from foldedcnns.serving.decode import (
    DEFAULT_MAX_BODY_MB,
    MULTIPART,
    check_media_type,
    decode_images,
    read_body,
    split_multipart,
)
from foldedcnns.serving.errors import ServingError
from foldedcnns.serving.service import error_reply, load_predictor, model_info, predictions_json

APP_NAME = "foldedcnns"
DEFAULT_REPLICA_CPUS = 1.0


def _import_serve() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ConfigError("--ray needs Ray Serve; install it with: pip install 'foldedcnns[ray,serve]'") from exc
    return ray, serve


def checkpoint_batch(checkpoint: str, max_batch_images: int | None) -> int:
    """N for the checkpoint's fold: the default rounded up to a multiple of f, a given N checked exactly."""
    return batch_images(ModelConfig.from_dict(load_checkpoint(checkpoint)["model_config"]).fold, max_batch_images)


def build_application(checkpoint: str, *, replicas: int = 1, replica_cpus: float = DEFAULT_REPLICA_CPUS,
                      backend: str = "eager", precision: str = "fp32", device: str = "cpu",
                      max_batch_images: int | None = None, max_delay_ms: float = DEFAULT_DELAY_MS,
                      max_queue_images: int = DEFAULT_QUEUE_IMAGES, max_body_mb: float = DEFAULT_MAX_BODY_MB) -> Any:
    """The bound Ray Serve application (``serve.run`` it); one replica class per call."""
    _, serve = _import_serve()
    checkpoint = str(Path(checkpoint).resolve())
    n = checkpoint_batch(checkpoint, max_batch_images)
    gpus = 1 if device.startswith("cuda") else 0
    max_body = int(max_body_mb * 1024 * 1024)

    def count_images(items: list[np.ndarray]) -> int:
        return sum(len(item) for item in items)

    @serve.deployment(name="FoldedCNN", num_replicas=replicas, max_ongoing_requests=2 * n,
                      max_queued_requests=max_queue_images,
                      ray_actor_options={"num_cpus": replica_cpus, "num_gpus": gpus})
    class FoldedReplica:
        def __init__(self) -> None:
            torch.set_num_threads(max(1, round(replica_cpus)))
            self.predictor = load_predictor(checkpoint, backend=backend, precision=precision, device=device,
                                            max_batch_images=n)

        @serve.batch(max_batch_size=n, batch_wait_timeout_s=max_delay_ms / 1000.0, batch_size_fn=count_images)
        async def classify(self, chunks: list[np.ndarray]) -> list[list[dict[str, Any]]]:
            batch = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            preds = await asyncio.get_running_loop().run_in_executor(None, self.predictor.predict_batch, batch)
            rows = predictions_json(preds)
            out, start = [], 0
            for chunk in chunks:
                out.append(rows[start:start + len(chunk)])
                start += len(chunk)
            return out

        async def predict(self, request: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
            try:
                kind = check_media_type(request.headers.get("content-type"))
                body = await read_body(request.stream(), max_body, request.headers.get("content-length"))
                crop, payload = request.query_params.get("crop"), body
                if kind == MULTIPART:
                    payload, form_crop = await split_multipart(request.headers, body, max_body)
                    crop = crop or form_crop
                images = await asyncio.get_running_loop().run_in_executor(
                    None, decode_images, kind, payload, self.predictor.input_hw, crop)
                if len(images) > max_queue_images:
                    return _error(413, f"a request of {len(images)} images exceeds --max-queue-images "
                                       f"{max_queue_images}; send fewer images per request")
                parts = await asyncio.gather(*(self.classify(images[i:i + n]) for i in range(0, len(images), n)))
                return 200, {"predictions": [row for part in parts for row in part]}, {}
            except ServingError as exc:
                return _error(exc.status, str(exc), exc.retry_after)
            except FoldedCNNsError as exc:
                return _error(400, first_line(exc, 300))
            except Exception as exc:  # a model fault: this request's answer, the replica goes on
                return _error(500, f"{type(exc).__name__}: {first_line(exc)}")

        async def __call__(self, request: Any) -> Any:
            from starlette.responses import JSONResponse

            path, method = request.url.path.rstrip("/") or "/", request.method
            if path == "/v1/predict" and method == "POST":
                status, body, headers = await self.predict(request)
            elif path == "/v1/model" and method == "GET":
                info = model_info(self.predictor)
                status, body, headers = 200, {**info, "batcher": {"ray_serve": True, "max_batch_images": n,
                                                                   "max_delay_ms": max_delay_ms}}, {}
            elif path in ("/healthz", "/readyz") and method == "GET":
                status, body, headers = 200, {"status": "ok"}, {}
            else:
                status, body, headers = _error(404, f"{method} {path}: not found (Ray Serve path: /v1/predict, "
                                                    "/v1/model, /healthz, /readyz)")
            return JSONResponse(body, status_code=status, headers=headers)

    return FoldedReplica.bind()


def _error(status: int, message: str, retry_after: int | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    reply = error_reply(status, message, retry_after)
    return reply.status, reply.body, reply.headers


def serve_ray(checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
              num_cpus: int | None = None, **options: Any) -> int:
    """Start (or join) Ray, deploy the application on ``host:port``, serve until SIGTERM/SIGINT, shut down."""
    ray, serve = _import_serve()
    app = build_application(checkpoint, **options)  # checks the checkpoint and N before Ray starts
    stop = threading.Event()
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
             ignore_reinit_error=True, log_to_driver=False)
    # After ray.init, which installs handlers of its own that end the driver at once.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": host, "port": port})
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
