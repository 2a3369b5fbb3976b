"""Online serving: a dynamic batcher that forms batches in multiples of f, an HTTP server, Ray Serve, a load test.

* :mod:`~foldedcnns.serving.batcher`: :class:`DynamicBatcher`, the asyncio batcher over a
  :class:`~foldedcnns.inference.Predictor`, for embedding in any asyncio service;
* :mod:`~foldedcnns.serving.service` and :mod:`~foldedcnns.serving.http`: the native server
  (``foldedcnns serve``: Starlette on uvicorn, Prometheus metrics, graceful drain);
* :mod:`~foldedcnns.serving.stream`: the native server's WebSocket ``/v1/stream`` (frames in, one answer each
  out, in order, through the same batcher, a bounded window of frames in flight per connection);
* :mod:`~foldedcnns.serving.ray_serve`: the same API as a Ray Serve application (``--ray``);
* :mod:`~foldedcnns.serving.loadtest`: the closed-loop load generator (``foldedcnns loadtest``).

Starlette, uvicorn, prometheus-client and httpx (``pip install 'foldedcnns[serve]'``) and Ray Serve
are imported only when a server or a load test starts, so importing this package needs none of them.
"""

from foldedcnns.serving.batcher import DynamicBatcher
from foldedcnns.serving.errors import (
    BadRequest,
    BatchFailed,
    DeadlineExceeded,
    QueueFull,
    RequestTooLarge,
    ServingError,
    ShuttingDown,
    UnsupportedMediaType,
)
from foldedcnns.serving.http import build_app, make_server, serve
from foldedcnns.serving.limits import RequestBudget
from foldedcnns.serving.loadtest import LevelResult, loadtest
from foldedcnns.serving.ray_serve import build_application, serve_ray
from foldedcnns.serving.service import Service, build_service

__all__ = [
    "BadRequest",
    "BatchFailed",
    "DeadlineExceeded",
    "DynamicBatcher",
    "LevelResult",
    "QueueFull",
    "RequestBudget",
    "RequestTooLarge",
    "Service",
    "ServingError",
    "ShuttingDown",
    "UnsupportedMediaType",
    "build_app",
    "build_application",
    "build_service",
    "loadtest",
    "make_server",
    "serve",
    "serve_ray",
]
