"""The native server: a Starlette app over a :class:`~foldedcnns.serving.service.Service`, run by uvicorn.

Routes (:data:`~foldedcnns.serving.service.ROUTES`): ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics``; and the WebSocket ``/v1/stream`` (:mod:`~foldedcnns.serving.stream`: frames
in, one JSON answer per frame out, through the same batcher).
Every error is JSON ``{"error": "<one line>", "status": N}``. What a connection may hold (head and body
timeouts, the connection cap, keep-alive) is :class:`~foldedcnns.serving.connections.ConnectionLimits`.

Shutdown: the first SIGTERM (or Ctrl-C) starts a drain instead of uvicorn's immediate stop: ``/readyz``
answers 503, every new request that reaches the process is answered (predictions 503 with
``Retry-After``) and closes its connection, every request already accepted is answered. At
``drain_timeout_s`` uploads still arriving are cut (503). Streams stop reading, answer the frames they read
and close with 1001; new ones are refused (503). Then the listener closes: connections the
kernel had queued are accepted and answered first, idle connections may still send one request for
:data:`CLOSE_GRACE_S`, and the process exits 0: every request that reached it was answered. Exit 1
only when one could not be (a batch still running past the deadline, or a second signal, which stops
at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from foldedcnns.serving.connections import ConnectionLimits, Gate, bind_socket, guarded_protocol, timed_chunks
from foldedcnns.serving.errors import Reply, error_reply
from foldedcnns.serving.metrics import require
from foldedcnns.serving.service import ROUTES, Service
from foldedcnns.serving.stream import STREAM_PATH, ChannelClosed, StreamSession

LOG = logging.getLogger("foldedcnns.serving")
DEFAULT_DRAIN_TIMEOUT_S = 30.0
CUT_GRACE_S = 1.0  # after the drain deadline cut: how long answers may still take before the drain gives up
CLOSE_GRACE_S = 0.5  # after the listener closed: how long an idle connection may still send a request
CONNECTION_CLOSE_TIMEOUT_S = 5.0  # then: how long uvicorn waits for the requests still on connections
PREDICT_PATH = next(r.path for r in ROUTES if r.endpoint == "predict")
CLOSE_AFTER = (408, 413)  # answered before the body was read: the connection is closed after the answer


def build_app(service: Service, *, limits: ConnectionLimits | None = None, gate: Gate | None = None) -> Any:
    """The ASGI application; its lifespan starts and stops the service's batcher. Request bodies are read
    with the body timeouts of ``limits`` (default :class:`ConnectionLimits`) and cut when ``gate`` says so."""
    applications = require("starlette.applications")
    responses = require("starlette.responses")
    routing = require("starlette.routing")
    exceptions = require("starlette.exceptions")
    request_class = require("starlette.requests").Request
    limits = limits or ConnectionLimits()
    gate = gate or Gate()

    def respond(reply: Reply) -> Any:
        headers = reply.headers
        if service.draining or reply.status in CLOSE_AFTER:
            headers = {**headers, "Connection": "close"}
        if isinstance(reply.body, bytes):  # already JSON (the predictions)
            return responses.Response(reply.body, status_code=reply.status, headers=headers,
                                      media_type="application/json")
        return responses.JSONResponse(reply.body, status_code=reply.status, headers=headers)

    async def predict(request: Any) -> Any:
        reply = await service.predict(request.headers, timed_chunks(request.stream(), limits, gate),
                                      request.query_params)
        if reply.status == 499:
            LOG.info("client disconnected during its upload (counted as 499)")
        return respond(reply)

    async def predict_direct(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``POST /v1/predict`` without Starlette's router and middleware: the same handler, about 6 us sooner
        (docs/serving.md, "Where the time goes"). Starlette's route still answers it under a root path."""
        response = await predict(request_class(scope, receive))
        await response(scope, receive, send)

    async def model(request: Any) -> Any:
        return respond(service.model())

    async def healthz(request: Any) -> Any:
        return respond(service.healthz())

    async def readyz(request: Any) -> Any:
        return respond(service.readyz())

    async def metrics(request: Any) -> Any:
        body, content_type = service.metrics.render()
        return responses.Response(body, headers={"Content-Type": content_type})

    closed = (require("starlette.websockets").WebSocketDisconnect, RuntimeError, OSError)

    async def stream(websocket: Any) -> None:
        session = StreamSession(service, _WebSocketChannel(websocket, responses, closed), limits.stream_window)
        try:
            await session.run(websocket.headers, websocket.query_params)
        except asyncio.CancelledError:  # uvicorn's shutdown grace ran out (or a second signal): one line
            gate.unanswered += session.inflight
            LOG.warning("%s cancelled at shutdown with %d frames unanswered", STREAM_PATH, session.inflight)

    async def http_error(request: Any, exc: Any) -> Any:
        return respond(error_reply(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        except asyncio.CancelledError:  # a second signal: uvicorn skipped the shutdown; stop at once, quietly
            return
        await service.stop()

    handlers = {"predict": predict, "model": model, "healthz": healthz, "readyz": readyz, "metrics": metrics}
    routes = [routing.Route(r.path, handlers[r.endpoint], methods=[r.method]) for r in ROUTES]
    routes.append(routing.WebSocketRoute(STREAM_PATH, stream))
    starlette = applications.Starlette(routes=routes, lifespan=lifespan,
                                       exception_handlers={exceptions.HTTPException: http_error})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await starlette(scope, receive, send)
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            if scope["path"] == PREDICT_PATH and scope["method"] == "POST":
                await predict_direct(scope, receive, tracked)
            else:
                await starlette(scope, receive, tracked)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs after its shutdown grace: one line, not its traceback, and a 503
            # where the answer had not begun.
            gate.unanswered += 1
            LOG.warning("%s %s cancelled at shutdown before its answer", scope["method"], scope["path"])
            if not started:
                reply = error_reply(503, "the server stopped before answering; retry", 5)
                await respond(reply)(scope, receive, send)

    return app


class _WebSocketChannel:
    """A Starlette WebSocket as the :class:`~foldedcnns.serving.stream.Channel` of a stream."""

    def __init__(self, websocket: Any, responses: Any, closed: tuple[type[BaseException], ...]) -> None:
        self.websocket, self.responses, self.closed = websocket, responses, closed

    async def accept(self) -> None:
        try:
            await self.websocket.accept()
        except self.closed as exc:  # the client left during the handshake
            raise ChannelClosed(str(exc)) from exc

    async def deny(self, reply: Reply) -> None:
        with contextlib.suppress(*self.closed):
            if "websocket.http.response" in self.websocket.scope.get("extensions", {}):
                await self.websocket.send_denial_response(
                    self.responses.JSONResponse(reply.body, status_code=reply.status, headers=reply.headers))
            else:  # a server without the denial extension: the close code says as much (uvicorn answers 403)
                await self.websocket.close(1013 if reply.status == 503 else 1008, reply.body["error"][:120])

    async def receive(self) -> bytes | str | None:
        try:
            message = await self.websocket.receive()
        except self.closed:
            return None
        if message["type"] == "websocket.disconnect":
            return None
        data = message.get("bytes")
        return data if data is not None else message.get("text") or ""

    async def send(self, text: str) -> None:
        try:
            await self.websocket.send({"type": "websocket.send", "text": text})
        except self.closed as exc:
            raise ChannelClosed(str(exc)) from exc

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(*self.closed):
            await self.websocket.close(code, reason)


def make_server(service: Service, *, host: str = "127.0.0.1", port: int = 8000,
                drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S, log_level: str = "warning",
                limits: ConnectionLimits | None = None) -> Any:
    """A uvicorn server whose SIGTERM drains ``service`` first (see the module doc); run it with
    ``server.run(sockets=[bind_socket(host, port)])`` (``host`` and ``port`` are for a plain ``run()``)."""
    uvicorn = require("uvicorn")
    limits = limits or ConnectionLimits()
    gate = Gate()

    class DrainingServer(uvicorn.Server):
        drain_requested = False
        drain_timed_out = False
        drain_deadline = 0.0
        closing_since: float | None = None

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.last_accepted: set[asyncio.Task[Any]] = set()

        def handle_exit(self, sig: int, frame: Any) -> None:
            # Not uvicorn's: no re-raise of the signal after shutdown (the exit code stays ours).
            if self.drain_requested:
                self.should_exit = self.force_exit = True
            self.drain_requested = True

        @property
        def unanswered(self) -> int:
            return gate.unanswered

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            for server in getattr(self, "servers", []):
                for sock in server.sockets:
                    bound_host, bound_port = sock.getsockname()[:2]
                    info = service.model().body
                    print(f"foldedcnns: serving {info['task']} (fold {info['fold']}, {info['backend']}) on "
                          f"http://{bound_host}:{bound_port}", flush=True)

        async def on_tick(self, counter: int) -> bool:
            now = time.monotonic()
            if self.drain_requested and not service.draining:
                service.begin_drain()
                gate.draining, self.drain_deadline = True, now + drain_timeout_s
            if service.draining and self.closing_since is None and not self.should_exit:
                if service.drained:
                    self._close_listeners(now)
                elif now > self.drain_deadline and not gate.cut:
                    cut = gate.cut_uploads()
                    LOG.warning("drain timeout of %g s reached: %d uploads still arriving cut with 503",
                                drain_timeout_s, cut)
                elif now > self.drain_deadline + CUT_GRACE_S:
                    LOG.error("drain timeout of %g s exceeded with %d requests in flight", drain_timeout_s,
                              service.inflight)
                    self.drain_timed_out = True
                    self._close_listeners(now)
            if self.closing_since is not None and not self.should_exit:
                idle = not gate.busy()
                if (idle and (not gate.protocols or now > self.closing_since + CLOSE_GRACE_S)) \
                        or now > self.closing_since + CLOSE_GRACE_S + CUT_GRACE_S:
                    self.should_exit = True
            return await super().on_tick(counter)

        def _close_listeners(self, now: float) -> None:
            """Accept what the kernel has queued, close the listener, and give idle connections a last chance."""
            self.closing_since = now
            accepted = []
            for server in self.servers:
                for listening in server.sockets:
                    with listening.dup() as sock, contextlib.suppress(OSError):  # EAGAIN: nothing (more) queued
                        sock.setblocking(False)
                        while True:
                            accepted.append(sock.accept()[0])
                server.close()
            loop = asyncio.get_running_loop()
            for conn in accepted:
                conn.setblocking(False)
                task = loop.create_task(loop.connect_accepted_socket(self._protocol, conn))
                self.last_accepted.add(task)
                task.add_done_callback(self.last_accepted.discard)
            for protocol in list(gate.protocols):
                protocol.close_when_idle(CLOSE_GRACE_S)

        def _protocol(self) -> asyncio.Protocol:  # as uvicorn's startup makes one for each accepted connection
            return config.http_protocol_class(config=config, server_state=self.server_state,
                                              app_state=self.lifespan.state)

    app = build_app(service, limits=limits, gate=gate)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                            http=guarded_protocol(limits, gate, service.metrics),
                            ws_max_size=service.budget.max_body, ws_per_message_deflate=False,
                            timeout_graceful_shutdown=CONNECTION_CLOSE_TIMEOUT_S, **limits.uvicorn_options())
    return DrainingServer(config)


def serve(service: Service, *, host: str = "127.0.0.1", port: int = 8000,
          drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S, log_level: str = "warning",
          limits: ConnectionLimits | None = None, sock: socket.socket | None = None) -> int:
    """Run the server until a signal drains it; 0 when every request that reached it was answered, else 1.

    ``sock``: a listening socket from :func:`~foldedcnns.serving.connections.bind_socket` (then ``host`` and
    ``port`` are unused); by default one is bound here (a port in use: a one-line ConfigError)."""
    limits = limits or ConnectionLimits()
    own = sock is None
    sock = sock if sock is not None else bind_socket(host, port, limits.backlog)
    try:
        server = make_server(service, host=host, port=port, drain_timeout_s=drain_timeout_s, log_level=log_level,
                             limits=limits)
        server.run(sockets=[sock])
    finally:
        if own:
            sock.close()
    if not server.started:
        print("foldedcnns: error: the server did not start (see the log above)", file=sys.stderr)
        return 1
    if server.drain_timed_out or server.force_exit or server.unanswered:
        print("foldedcnns: error: stopped before every accepted request was answered", file=sys.stderr)
        return 1
    print("foldedcnns: drained, every accepted request answered", flush=True)
    return 0
