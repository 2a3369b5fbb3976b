"""Live streams on loopback, for trying ``foldedcnns watch`` out, its tests and ``benchmarks/live.py``.

:func:`encode_clip` encodes a synthetic clip once (H.264 in MPEG-TS, in memory, one keyframe a second)
and remembers where each frame's bytes end; :class:`LoopbackStreams` then serves it as K independent live
streams, ``tcp://127.0.0.1:PORT`` each, paced at the clip's frame rate: every connection gets the clip
from its start, frame ``i``'s bytes no earlier than ``i / fps`` seconds after it connected. Serving costs
a socket write per frame (the clip is not encoded again), so one machine serves many streams and the
decoding side is what is measured. :meth:`LoopbackStreams.kill` closes a stream (its connections and
its port) and :meth:`LoopbackStreams.restart` opens it again on the same port: a camera that drops out.

Command line (stop with Ctrl-C or SIGTERM)::

    python -m foldedcnns.inference.live_streams --streams 4 --size 320x240 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from foldedcnns.errors import ConfigError
from foldedcnns.utils.signals import raise_on_signals, signal_name

DEFAULT_FPS = 30
KEYFRAME_SECONDS = 1
_ACCEPT_POLL_S = 0.1


@dataclass(frozen=True)
class Clip:
    """An encoded clip: the MPEG-TS bytes, ``ends[i]`` the byte where frame ``i`` ends, and its rate."""

    data: bytes
    ends: tuple[int, ...]
    fps: int
    size: tuple[int, int]  # (height, width)

    @property
    def frames(self) -> int:
        return len(self.ends)


def synthetic_frames(count: int, size: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    """``count`` RGB frames ``(H, W, 3)``: a fixed textured background and a bright square that moves one
    step a frame (so every frame differs, as a game screen or a camera does, at a modest bit rate)."""
    height, width = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = ((xx * 255 // max(width - 1, 1) + yy * 128 // max(height - 1, 1)) % 256).astype(np.uint8)
    background = np.stack([background, background[::-1], 255 - background], axis=-1)
    background = np.clip(background.astype(np.int16) + rng.integers(-12, 13, background.shape), 0, 255)
    background = background.astype(np.uint8)
    side = max(8, min(height, width) // 6)
    for i in range(count):
        frame = background.copy()
        x = (i * 7) % max(width - side, 1)
        y = (i * 3) % max(height - side, 1)
        frame[y:y + side, x:x + side] = (250, 240, (i * 16) % 256)
        yield frame


def encode_clip(frames: int, size: tuple[int, int] = (240, 320), fps: int = DEFAULT_FPS) -> Clip:
    """Encode ``frames`` synthetic frames of ``size`` (height, width) as H.264 (x264 ultrafast, zero latency:
    no B-frames, every frame out at once) in MPEG-TS at ``fps``; needs PyAV."""
    import av

    if frames < 1 or fps < 1 or min(size) < 16:
        raise ConfigError(f"a clip needs >= 1 frame, fps >= 1 and sides >= 16, got {frames}, {fps}, {size}")
    buffer = io.BytesIO()
    ends = []
    out = av.open(buffer, "w", format="mpegts", options={"flush_packets": "1"})
    try:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency",
                                                              "g": str(fps * KEYFRAME_SECONDS)})
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for index, image in enumerate(synthetic_frames(frames, size)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
            ends.append(buffer.tell())
        for packet in stream.encode(None):
            out.mux(packet)
    finally:
        out.close()
    data = buffer.getvalue()
    ends[-1] = len(data)
    return Clip(data, tuple(ends), fps, (int(size[0]), int(size[1])))


class _Stream:
    """One served stream: a listening port, its connections, the frames it sent."""

    def __init__(self, clip: Clip, repeat: bool) -> None:
        self.clip, self.repeat = clip, repeat
        self.port = 0
        self.sent = 0  # frames whose bytes were written whole, over all connections
        self.connections = 0
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.listener: socket.socket | None = None
        self.clients: set[socket.socket] = set()
        self.threads: list[threading.Thread] = []

    def open(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        listener.settimeout(_ACCEPT_POLL_S)
        self.port = listener.getsockname()[1]
        self.listener = listener
        self.closed.clear()
        thread = threading.Thread(target=self._accept, args=(listener,), name=f"stream-{self.port}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while not self.closed.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.clients.add(client)
                self.connections += 1
            thread = threading.Thread(target=self._send, args=(client,), name=f"stream-{self.port}-send",
                                      daemon=True)
            self.threads.append(thread)
            thread.start()

    def _send(self, client: socket.socket) -> None:
        clip, start, begin = self.clip, time.monotonic(), 0
        try:
            for index, end in enumerate(clip.ends):
                delay = start + index / clip.fps - time.monotonic()
                if delay > 0 and self.closed.wait(delay):
                    return
                if self.closed.is_set():
                    return
                client.sendall(clip.data[begin:end])
                begin = end
                with self.lock:
                    self.sent += 1
        except OSError:
            return
        finally:
            with self.lock:
                self.clients.discard(client)
            with contextlib.suppress(OSError):
                client.close()
        if not self.repeat:
            self.close()

    def close(self) -> None:
        self.closed.set()
        with self.lock:
            listener, self.listener = self.listener, None
            clients = list(self.clients)
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)


class LoopbackStreams:
    """``count`` live streams of ``clip`` on loopback (see the module doc); a context manager that closes
    every socket and joins every thread it started. With ``repeat`` a stream serves the clip to every
    connection; without, it closes its port once it has sent the clip whole (the stream has ended)."""

    def __init__(self, clip: Clip, count: int, *, repeat: bool = False) -> None:
        if count < 1:
            raise ConfigError(f"LoopbackStreams needs at least one stream, got {count}")
        self.clip = clip
        self._streams = [_Stream(clip, repeat) for _ in range(count)]

    def __enter__(self) -> LoopbackStreams:
        try:
            for stream in self._streams:
                stream.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def urls(self) -> list[str]:
        return [f"tcp://127.0.0.1:{s.port}" for s in self._streams]

    def sent(self, index: int) -> int:
        """Frames stream ``index`` has sent whole, over all its connections."""
        return self._streams[index].sent

    def connections(self, index: int) -> int:
        """Connections stream ``index`` has accepted."""
        return self._streams[index].connections

    def kill(self, index: int) -> None:
        """Close stream ``index`` now: its connections are cut and its port refuses new ones."""
        self._streams[index].close()

    def restart(self, index: int) -> None:
        """Open stream ``index`` again on its port (the clip starts again for the next connection)."""
        self._streams[index].open()

    def close(self) -> None:
        for stream in self._streams:
            stream.close()
        for stream in self._streams:
            for thread in stream.threads:
                thread.join(timeout=2.0)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve synthetic live streams on loopback (tcp://127.0.0.1:PORT).")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT (default: 320x240)")
    parser.add_argument("--fps", type=int, default=DEFAULT_FPS)
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length; each connection gets it once")
    args = parser.parse_args(argv)
    clip = encode_clip(max(1, round(args.seconds * args.fps)), _size(args.size), args.fps)
    with raise_on_signals(), LoopbackStreams(clip, args.streams, repeat=True) as streams:
        print(" ".join(streams.urls), flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: close every stream
            print(f"stopped by {signal_name(exc)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
