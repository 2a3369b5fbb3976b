"""``/v1/stream``: frames in over a WebSocket, one JSON answer per frame out, in order, through the server's batcher.

The protocol (docs/serving.md, "Streaming frames over a WebSocket"):

* The client opens ``ws://HOST:PORT/v1/stream``. ``?crop=x,y,w,h`` and the header ``X-Request-Timeout-Ms``
  mean what they mean for ``POST /v1/predict``, for every frame of the connection. A bad one, or any new
  stream while the server drains, is refused before the upgrade with the HTTP status and JSON error a POST
  would get (400, 503).
* Each binary message is one frame: an encoded image (PNG, JPEG, anything Pillow reads), or the bytes of
  ``np.save`` of one uint8 ``(H, W, 3)`` (or ``(1, H, W, 3)``) image, told apart by the ``.npy`` magic
  bytes. It is decoded, limited, cropped and resized exactly as a POST body (:func:`~.decode.decode_request`)
  and classified by the server's one :class:`~.batcher.DynamicBatcher`, so frames of every stream fold
  together with HTTP requests.
* Each message gets one text message, in the order the messages were sent:
  ``{"frame": i, "label": ..., "class_name": ..., "score": ...}`` (``i`` counts the connection's messages
  from 0), or ``{"frame": i, "error": "<one line>", "status": N}`` with the status a POST would get (and
  ``"retry_after": s`` with 503). The connection stays open after an error.
* Backpressure: at most ``window`` frames of a connection are in flight (read and not yet answered). While
  its window is full the server does not read the connection (uvicorn pauses the socket), so TCP slows the
  client; nothing is buffered beyond the window and the socket buffers.
* Drain (SIGTERM): every stream stops reading, answers the frames it read and closes with 1001 (going away).
  A client that hangs up simply loses the answers still in flight; the server goes on.

:class:`StreamSession` is free of any web framework: it talks to a :class:`Channel`, which the native
server (:mod:`~foldedcnns.serving.http`) makes of a Starlette WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from foldedcnns.serving.connections import DEFAULT_STREAM_WINDOW
from foldedcnns.serving.decode import NPY, parse_crop
from foldedcnns.serving.errors import BadRequest, Reply, ServingError, ShuttingDown, reply_for
from foldedcnns.serving.service import Service, predictions_json

STREAM_PATH = "/v1/stream"
CLOSE_GOING_AWAY = 1001  # RFC 6455: the server is going down
NPY_MAGIC = b"\x93NUMPY"
IMAGE = "image/*"  # any image Pillow reads; what POST's image/* bodies go through


class ChannelClosed(Exception):
    """The client is gone: an answer could not be sent."""


class Channel(Protocol):
    """One WebSocket connection as the session sees it."""

    async def accept(self) -> None:
        """Complete the upgrade; :class:`ChannelClosed` when the client left during it."""

    async def deny(self, reply: Reply) -> None:
        """Refuse the connection before the upgrade with ``reply``'s status and JSON body."""

    async def receive(self) -> bytes | str | None:
        """The next message (bytes or text), or None once the client has closed or is gone."""

    async def send(self, text: str) -> None:
        """Send one text message; :class:`ChannelClosed` when the client is gone."""

    async def close(self, code: int, reason: str) -> None: ...


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


class StreamSession:
    """One ``/v1/stream`` connection: reads frames while its window has room, answers them in order."""

    def __init__(self, service: Service, channel: Channel, window: int = DEFAULT_STREAM_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"the stream window must be at least 1 frame, got {window}")
        self.service, self.channel, self.metrics = service, channel, service.metrics
        self.window = window
        self._room = asyncio.Semaphore(window)
        self._pending: deque[asyncio.Task[str]] = deque()  # frames read, in order, until their answer is sent
        self._more = asyncio.Event()
        self._reading = True
        self.gone = False  # an answer could not be sent: the client hung up
        self.frames = 0  # messages read
        self.peak = 0  # the most frames in flight at once
        self._query: dict[str, str] = {}
        self._timeout: float | None = None

    @property
    def inflight(self) -> int:
        """Frames read and not yet answered (at most :attr:`window`)."""
        return len(self._pending)

    async def run(self, headers: Mapping[str, str], query: Mapping[str, str]) -> None:
        """Serve the connection until the client closes or the server drains (then close with 1001)."""
        service = self.service
        try:
            if service.draining:
                raise ShuttingDown("the server is shutting down; retry on another replica")
            self._timeout = service.request_timeout(headers)
            crop = query.get("crop")
            parse_crop(crop)  # a bad crop is refused once, before the upgrade, not on every frame
        except ServingError as exc:
            await self.channel.deny(reply_for(exc))
            return
        self._query = {"crop": crop} if crop else {}
        try:
            await self.channel.accept()
        except ChannelClosed:
            return
        service.streams += 1
        self.metrics.stream_opened()
        writer = asyncio.ensure_future(self._write())
        try:
            drained = await self._read()
            self._reading = False
            self._more.set()
            await writer
            if drained and not self.gone:
                await self.channel.close(CLOSE_GOING_AWAY, "the server is shutting down")
        finally:
            writer.cancel()  # only still running when this task was cancelled (a forced stop)
            for task in self._pending:
                task.cancel()
            service.streams -= 1
            self.metrics.stream_closed(len(self._pending))

    async def _read(self) -> bool:
        """Read frames while the window has room; True when the drain stopped it, False when the client closed."""
        drain = asyncio.ensure_future(self.service.drain_started.wait())
        receive: asyncio.Future | None = None
        try:
            while True:
                if self._room.locked():
                    self.metrics.stream_window_full()
                await self._room.acquire()
                if drain.done():
                    self._room.release()
                    return True
                receive = asyncio.ensure_future(self.channel.receive())
                await asyncio.wait((receive, drain), return_when=asyncio.FIRST_COMPLETED)
                if not receive.done():  # draining: a message not read yet stays unread
                    self._room.release()
                    return True
                data, receive = receive.result(), None
                if data is None:
                    self._room.release()
                    return False
                self._take(data)
        finally:
            drain.cancel()
            if receive is not None:
                receive.cancel()

    def _take(self, data: bytes | str) -> None:
        index = self.frames
        self.frames += 1
        self.metrics.frame_read()
        self._pending.append(asyncio.ensure_future(self._classify(index, data)))
        self.peak = max(self.peak, len(self._pending))
        self._more.set()

    async def _write(self) -> None:
        """Send the answers in the frames' order; each one sent frees a place in the window."""
        pending = self._pending
        while True:
            if not pending:
                if not self._reading:
                    return
                self._more.clear()
                await self._more.wait()
                continue
            text = await pending[0]
            if not self.gone:
                try:
                    await self.channel.send(text)
                except ChannelClosed:
                    self.gone = True
            pending.popleft()
            self.metrics.frame_sent()
            self._room.release()

    async def _classify(self, index: int, data: bytes | str) -> str:
        """One frame's answer as JSON text; never raises (an error is the frame's answer)."""
        service = self.service
        started, arrived = time.perf_counter(), asyncio.get_running_loop().time()
        try:
            if not isinstance(data, bytes):
                raise BadRequest("a text message is not a frame; send each frame as a binary message (an encoded "
                                 "image, or np.save of one uint8 (H, W, 3) array)")
            kind = NPY if data.startswith(NPY_MAGIC) else IMAGE
            images = await service.decode({"content-type": kind}, _one_chunk(data), self._query, admit=self._admit,
                                          deadline=None if self._timeout is None else arrived + self._timeout)
            preds = await service.batcher.submit(images, timeout_s=self._timeout, arrived=arrived)
            answer, status = {"frame": index, **predictions_json(preds)[0]}, 200
        except Exception as exc:  # the frame's error status; a bug is 500 with its reason, the stream goes on
            reply = reply_for(exc)
            answer, status = {"frame": index, **reply.body}, reply.status
            if "Retry-After" in reply.headers:
                answer["retry_after"] = int(reply.headers["Retry-After"])
        self.metrics.frame_answered(status, time.perf_counter() - started)
        return json.dumps(answer)

    def _admit(self, images: int) -> None:
        if images != 1:
            raise BadRequest(f"a stream message is one frame, but this .npy array holds {images} images; send "
                             "one message per frame")
        self.service.admit(1)

