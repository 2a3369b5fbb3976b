"""Connection hygiene of the native server: what one client may hold, and for how long.

uvicorn bounds some of it itself (the keep-alive idle time, the listen backlog, h11's head size), but
not the rest: it has no timeout for a request head (a connection that sends nothing, or a head one
byte a second, is kept forever), none for a request body, and its ``limit_concurrency`` answers 503
only once a request head has arrived, so idle connections are never refused and can use up the
process's file descriptors. This module adds what is missing:

* :func:`guarded_protocol`: uvicorn's HTTP protocol (httptools, else h11) with a connection cap
  (a connection past ``max_connections`` gets 503 + ``Retry-After`` on arrival and is closed, before
  it is read), a head timeout (a connection that has not sent a whole request head within
  ``header_timeout_s`` of opening, or of its previous answer, is cut: 408 if it sent part of one) and
  a head size limit (431);
* :func:`timed_chunks`: a request body read with ``body_timeout_s`` between two chunks and
  ``upload_timeout_s`` for the whole body (408), and cut at once at the drain deadline (503);
* :func:`bind_socket`: the listening socket, bound before the model loads, so a port in use is one
  ``ConfigError`` line.

A connection upgraded to a WebSocket (``/v1/stream``) leaves these HTTP limits (its head timer stops): it
is bounded by its window of frames in flight (``stream_window``, :mod:`~foldedcnns.serving.stream`), the
message size (``--max-body-mb``) and uvicorn's WebSocket pings.

:class:`Gate` is the state the server shares with its connections: the drain, the uploads in progress.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.serving.errors import RequestTimeout, ShuttingDown
from foldedcnns.serving.transport import join_head_and_body
from foldedcnns.utils.throttle import Throttle

LOG = logging.getLogger("foldedcnns.serving")
CUT_LOG_EVERY_S = 10.0  # at most one "request body cut with 408" line this often (the count says how many)
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_UPLOAD_TIMEOUT_S = 60.0
DEFAULT_KEEP_ALIVE_S = 5.0  # uvicorn's own default
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_BACKLOG = 2048  # uvicorn's own default
DEFAULT_STREAM_WINDOW = 32  # frames of one WebSocket stream read and not yet answered
MAX_HEAD_BYTES = 16 * 1024  # h11's default limit on a request head, applied to httptools too
FD_RESERVE = 64  # file descriptors kept for the process's own files when the cap follows the open-file limit
REFUSE_LINGER_S = 0.5  # a refused connection is read (and dropped) this long, so the client reads its 503
MAX_LINGERING = FD_RESERVE // 4  # ...but no more than this many at once: past it one is closed at once


def _raw_reply(status: int, phrase: str, message: str, headers: str = "") -> bytes:
    """A whole HTTP/1.1 answer with the JSON error body, written before the connection closes."""
    body = json.dumps({"error": message, "status": status}).encode()
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n{headers}connection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


_REFUSED = _raw_reply(503, "Service Unavailable", "too many open connections (--max-connections); retry shortly",
                      "retry-after: 1\r\n")
_HEAD_TIMEOUT = _raw_reply(408, "Request Timeout", "the request head did not arrive in time (--header-timeout-s)")
_HEAD_TOO_LARGE = _raw_reply(431, "Request Header Fields Too Large", "the request head is too large")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold (``foldedcnns serve`` options of the same names)."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # open (or answered) to a whole request head; else cut
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # longest pause between two chunks of a body; else 408
    upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S  # longest whole body; else 408
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S  # an idle keep-alive connection is closed after this
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # past it a new connection gets 503 at once
    backlog: int = DEFAULT_BACKLOG  # connections the kernel queues before the server accepts them
    stream_window: int = DEFAULT_STREAM_WINDOW  # a WebSocket stream's frames in flight; then it is not read

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                flag = "--" + field.name.replace("_", "-")
                raise ConfigError(f"{flag} must be positive, got {value}")

    def cap(self) -> int:
        """``max_connections``, at most the open-file limit less :data:`FD_RESERVE`, so that accepting a
        connection never fails for want of a file descriptor."""
        try:
            import resource
        except ImportError:  # not on POSIX
            return self.max_connections
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - FD_RESERVE))

    def uvicorn_options(self) -> dict[str, Any]:
        """The limits uvicorn enforces itself (its ``limit_concurrency`` is replaced by :func:`guarded_protocol`)."""
        return {"timeout_keep_alive": self.keep_alive_s, "backlog": self.backlog,
                "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


class Gate:
    """What the server shares with its connections: the drain, the cut at its deadline, the uploads in
    progress, the open connections and the requests left unanswered."""

    def __init__(self) -> None:
        self.draining = False
        self.cut = False  # the drain deadline passed: uploads still arriving are answered 503
        self.uploads: set[Any] = set()  # the timers of the bodies being read
        self.protocols: set[Any] = set()
        self.unanswered = 0
        self.cut_lines = Throttle(CUT_LOG_EVERY_S)  # the 408 log lines of bodies cut by the timeouts

    def cut_uploads(self) -> int:
        """Cut every body still being read (503, as at a drain deadline); the number cut."""
        self.cut = True
        waiting = [watch for watch in self.uploads if watch.waiting]
        for watch in waiting:
            watch.fire("cut")
        return len(waiting)

    def busy(self) -> bool:
        """Whether a connection is in a request (reading, computing, answering, or part-way through a head)."""
        return any(p.busy() for p in self.protocols)


async def timed_chunks(chunks: AsyncIterator[bytes], limits: ConnectionLimits, gate: Gate) -> AsyncIterator[bytes]:
    """``chunks`` with ``limits.body_timeout_s`` between two of them and ``limits.upload_timeout_s`` in all
    (else :class:`RequestTimeout`, 408, and one log line), and cut at the drain deadline
    (:class:`ShuttingDown`, 503). One timer per request, not one per chunk: this is the hot path."""
    loop = asyncio.get_running_loop()
    watch = _Watch(loop, limits)
    gate.uploads.add(watch)
    it = aiter(chunks)
    try:
        while True:
            if gate.cut:
                raise ShuttingDown("the server shut down before the upload finished (--drain-timeout-s); retry")
            watch.reading()
            try:
                chunk = await anext(it)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if watch.expired is None:
                    raise
                uncancel = getattr(watch.task, "uncancel", None)  # Python >= 3.11: the cancel was ours
                if uncancel is not None:
                    uncancel()
                raise watch.error(limits, gate.cut_lines) from None
            finally:
                watch.last, watch.waiting = loop.time(), False
            yield chunk
    finally:
        watch.stop()
        gate.uploads.discard(watch)


class _Watch:
    """The timer of one body being read: fires at its deadline and, if the read is still waiting, cancels it."""

    __slots__ = ("end", "expired", "handle", "last", "limits", "loop", "task", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: ConnectionLimits) -> None:
        self.loop, self.limits, self.task = loop, limits, asyncio.current_task()
        self.last = loop.time()
        self.end = self.last + limits.upload_timeout_s
        self.expired: str | None = None  # "stalled", "upload" or "cut" once fired
        self.handle: asyncio.TimerHandle | None = None
        self.waiting = False

    def reading(self) -> None:
        self.waiting = True
        if self.handle is None:
            self.handle = self.loop.call_at(min(self.last + self.limits.body_timeout_s, self.end), self._check)

    def _check(self) -> None:
        self.handle = None
        if not self.waiting:  # between two reads: the next one arms the timer again
            return
        now = self.loop.time()
        due = min(self.last + self.limits.body_timeout_s, self.end)
        if now < due:
            self.handle = self.loop.call_at(due, self._check)
        else:
            self.fire("upload" if now >= self.end else "stalled")

    def fire(self, why: str) -> None:
        if self.expired is None and self.task is not None:
            self.expired = why
            self.task.cancel()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def error(self, limits: ConnectionLimits, lines: Throttle) -> Exception:
        if self.expired == "cut":
            return ShuttingDown("the server shut down before the upload finished (--drain-timeout-s); retry")
        if self.expired == "upload":
            what = f"the upload took longer than {limits.upload_timeout_s:g} s (--upload-timeout-s)"
        else:
            what = f"the body stalled for {limits.body_timeout_s:g} s (--body-timeout-s)"
        cut = lines.add()
        if cut:
            LOG.warning("request body cut with 408: %s (%d since the last such line; at most one every %g s)", what,
                        cut, CUT_LOG_EVERY_S)
        return RequestTimeout(f"{what}; send the body without pauses")


def default_protocol_class() -> type:
    """uvicorn's ``http="auto"`` choice: httptools when installed, else h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        return HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol
        return H11Protocol


def guarded_protocol(limits: ConnectionLimits, gate: Gate, metrics: Any, base: type | None = None) -> type:
    """uvicorn's HTTP protocol class ``base`` with the connection cap, the head timeout and the head size
    limit of ``limits`` (see the module doc); ``metrics`` counts open, refused and cut connections."""
    base = base or default_protocol_class()
    cap = limits.cap()
    lingering: set[Any] = set()  # refused connections still open (reading until the client has our 503)

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        _refused = False
        _head_timer: asyncio.TimerHandle | None = None
        _head_cycle: Any = None
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            if len(self.connections) >= cap:
                self._refused = True
                metrics.connection_refused()
                LOG.info("refused a connection: %d open (--max-connections)", len(self.connections))
                transport.write(_REFUSED)
                if len(lingering) >= MAX_LINGERING or not transport.can_write_eof():
                    transport.close()  # a flood: the descriptors matter more than a clean close
                    return
                transport.write_eof()
                lingering.add(self)
                self._linger = asyncio.get_running_loop().call_later(REFUSE_LINGER_S, transport.close)
                return
            super().connection_made(transport)
            gate.protocols.add(self)
            metrics.connection_opened()
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                if self in lingering:
                    lingering.discard(self)
                    self._linger.cancel()
                return
            self._stop_head_timer()
            if self in gate.protocols:
                gate.protocols.discard(self)
                metrics.connection_closed()
            super().connection_lost(exc)

        def eof_received(self) -> bool | None:
            return None if self._refused else super().eof_received()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            waiting = self._head_timer is not None
            super().data_received(data)
            join_head_and_body(self.cycle)  # the request this data completed: one write for its answer
            if not waiting or self._head_timer is None or self.transport.is_closing():
                return
            if self.cycle is not self._head_cycle:  # a whole head arrived: the request is the app's now
                self._stop_head_timer()
                if gate.draining:
                    self.cycle.keep_alive = False
                return
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._cut(_HEAD_TOO_LARGE, "head_too_large")

        def handle_websocket_upgrade(self, *args: Any) -> None:
            # The connection becomes a WebSocket protocol's (uvicorn swaps the transport's protocol, so this
            # one never hears of it again): no head timer, no longer an HTTP connection of the gate.
            self._stop_head_timer()
            if self in gate.protocols:
                gate.protocols.discard(self)
                metrics.connection_closed()
            super().handle_websocket_upgrade(*args)

        def on_response_complete(self) -> None:
            before = self.cycle
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle is before:
                self._await_head()

        def shutdown(self) -> None:
            if self._head_timer is not None and self._head_bytes:
                return  # a request head on its way: it is answered (503, draining), then the connection closes
            super().shutdown()

        def busy(self) -> bool:
            if self._head_timer is not None:
                return self._head_bytes > 0
            return self.cycle is not None and not self.cycle.response_complete

        def close_when_idle(self, grace_s: float) -> None:
            """The listener is closed: an idle connection may still send a request within ``grace_s``."""
            if self._head_timer is not None and not self._head_bytes:
                self._head_timer.cancel()
                self._head_timer = self.loop.call_later(grace_s, self._head_timeout)
            elif self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False

        def _await_head(self) -> None:
            self._stop_head_timer()
            self._head_cycle, self._head_bytes = self.cycle, 0
            self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timeout)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._head_bytes:
                self._cut(_HEAD_TIMEOUT, "header_timeout")
            else:  # idle: nothing to answer
                self.transport.close()

        def _cut(self, response: bytes, reason: str) -> None:
            self._stop_head_timer()
            metrics.connection_cut(reason)
            LOG.info("cut a connection: %s", reason)
            self.transport.write(response)
            self.transport.close()

    return GuardedProtocol


def bind_socket(host: str, port: int, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A listening TCP socket on ``host:port``; a port in use (or an address not on this machine) is a
    one-line :class:`ConfigError`, found before the model loads."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve --host {host!r} ({exc.strerror}); give an address such as 127.0.0.1"
                          ) from exc
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use; stop the server that holds it or choose another "
                              "--port (0 picks a free one)") from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"address {host} is not on this machine; give one of its addresses with --host "
                              "(127.0.0.1: loopback only, 0.0.0.0: all)") from exc
        if exc.errno == errno.EACCES:
            raise ConfigError(f"port {port} on {host} needs privileges; choose a --port above 1023") from exc
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --host or --port"
                          ) from exc
    return sock
