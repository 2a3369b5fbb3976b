"""The native server: a Starlette app over a :class:`~foldedcnns.serving.service.Service`, run by uvicorn.

Routes (:data:`~foldedcnns.serving.service.ROUTES`): ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics``.
Every error is JSON ``{"error": "<one line>", "status": N}``.

Shutdown: the first SIGTERM (or Ctrl-C) starts a drain instead of uvicorn's immediate stop: ``/readyz``
answers 503, new predictions get 503 with ``Retry-After``, every request already accepted is
answered, then uvicorn closes the connections and the process exits 0. ``drain_timeout_s`` bounds
the drain (then exit 1); a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from foldedcnns.serving.errors import Reply, error_reply
from foldedcnns.serving.metrics import require
from foldedcnns.serving.service import ROUTES, Service

LOG = logging.getLogger("foldedcnns.serving")
DEFAULT_DRAIN_TIMEOUT_S = 30.0
CONNECTION_CLOSE_TIMEOUT_S = 5.0  # after the drain: how long uvicorn waits for connections to finish


def build_app(service: Service) -> Any:
    """The Starlette application; its lifespan starts and stops the service's batcher."""
    applications = require("starlette.applications")
    responses = require("starlette.responses")
    routing = require("starlette.routing")
    exceptions = require("starlette.exceptions")

    def respond(reply: Reply) -> Any:
        return responses.JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

    async def predict(request: Any) -> Any:
        return respond(await service.predict(request.headers, request.stream(), request.query_params))

    async def model(request: Any) -> Any:
        return respond(service.model())

    async def healthz(request: Any) -> Any:
        return respond(service.healthz())

    async def readyz(request: Any) -> Any:
        return respond(service.readyz())

    async def metrics(request: Any) -> Any:
        body, content_type = service.metrics.render()
        return responses.Response(body, headers={"Content-Type": content_type})

    async def http_error(request: Any, exc: Any) -> Any:
        return respond(error_reply(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    handlers = {"predict": predict, "model": model, "healthz": healthz, "readyz": readyz, "metrics": metrics}
    routes = [routing.Route(r.path, handlers[r.endpoint], methods=[r.method]) for r in ROUTES]
    return applications.Starlette(routes=routes, lifespan=lifespan,
                                  exception_handlers={exceptions.HTTPException: http_error})


def make_server(service: Service, *, host: str = "127.0.0.1", port: int = 8000,
                drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S, log_level: str = "warning") -> Any:
    """A uvicorn server whose SIGTERM drains ``service`` first (see the module doc)."""
    uvicorn = require("uvicorn")

    class DrainingServer(uvicorn.Server):
        drain_requested = False
        drain_timed_out = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Not uvicorn's: no re-raise of the signal after shutdown (the exit code stays ours).
            if self.drain_requested:
                self.should_exit = self.force_exit = True
            self.drain_requested = True

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            for server in getattr(self, "servers", []):
                for sock in server.sockets:
                    bound_host, bound_port = sock.getsockname()[:2]
                    info = service.model().body
                    print(f"foldedcnns: serving {info['task']} (fold {info['fold']}, {info['backend']}) on "
                          f"http://{bound_host}:{bound_port}", flush=True)

        async def on_tick(self, counter: int) -> bool:
            if self.drain_requested and not service.draining:
                service.begin_drain()
            if service.draining and not self.should_exit:
                if service.drained:
                    self.should_exit = True
                elif time.monotonic() - service.drain_started > drain_timeout_s:
                    LOG.error("drain timeout of %.0f s exceeded with %d requests in flight", drain_timeout_s,
                              service.inflight)
                    self.drain_timed_out = self.should_exit = True
            return await super().on_tick(counter)

    config = uvicorn.Config(build_app(service), host=host, port=port, log_level=log_level, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=CONNECTION_CLOSE_TIMEOUT_S)
    return DrainingServer(config)


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 8000,
          drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S, log_level: str = "warning") -> int:
    """Run the server until a signal drains it; 0 when every accepted request was answered, else 1."""
    server = make_server(service, host=host, port=port, drain_timeout_s=drain_timeout_s, log_level=log_level)
    server.run()
    if not server.started:
        print("foldedcnns: error: the server did not start (see the log above); is the port in use?",
              file=sys.stderr)
        return 1
    if server.drain_timed_out or server.force_exit:
        print("foldedcnns: error: stopped before every accepted request was answered", file=sys.stderr)
        return 1
    print("foldedcnns: drained, every accepted request answered", flush=True)
    return 0
