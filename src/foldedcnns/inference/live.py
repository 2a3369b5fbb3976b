"""Live stream readers of ``foldedcnns watch``: one thread per stream decodes it, reconnecting when it drops.

A stream is anything FFmpeg opens (``rtsp://``, ``rtmp://``, ``http(s)://`` incl. HLS, ``tcp://``,
``udp://``, ``srt://``, ...), opened through PyAV with an open and a read timeout, or a video file paced at
its frame rate (``realtime``: for trying it out). Each :class:`StreamReader` thread decodes its stream
(FFmpeg releases the GIL while it decodes, so the streams decode in parallel), cuts every frame into each
model's view (:class:`~foldedcnns.data.frames.FrameSampler`, sampled from the Y/U/V planes) and hands it
to the :class:`~foldedcnns.inference.live_batcher.LiveBatcher`.

A network stream that ends or fails is reopened after a back-off (0.25 s, doubling to 8 s, reset by a
decoded frame): one log line and one count per reconnect; the other streams go on. A file that ends is
done. A stream whose frames do not fit a model's crop fails for good (reconnecting would not help).
Frames are numbered per stream over reconnects; ``pts`` is the stream's own time in seconds.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldedcnns.data.frames import FrameSampler
from foldedcnns.data.video import CutStream, DecodeStats, pyav_frames
from foldedcnns.errors import ConfigError, FoldedCNNsError, first_line
from foldedcnns.inference.decoding import ViewSpec
from foldedcnns.inference.live_batcher import LiveBatcher, LiveFrame
from foldedcnns.inference.live_output import StreamStats

LOG = logging.getLogger("foldedcnns.watch")
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.25, 8.0
# Open a live stream quickly (probe 0.5 s of it, not 5 s); decode with slice threads (frame threads
# hold frames back).
OPEN_OPTIONS = {"analyzeduration": "500000", "probesize": "1000000"}
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NAMED = re.compile(r"^([A-Za-z0-9_-]{1,64})=(.+)$")
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class StreamSource:
    """One stream: ``name`` (its rows, file and metrics label), ``url`` (or a file's path), ``is_file``."""

    name: str
    url: str
    is_file: bool


def _default_name(url: str, is_file: bool) -> str:
    if is_file:
        return _SLUG.sub("-", Path(url).stem).strip("-") or "stream"
    rest = _SCHEME.sub("", url).split("?")[0].split("@")[-1]
    return _SLUG.sub("-", rest.replace(":", "-")).strip("-.") or "stream"


def parse_streams(inputs: Sequence[str], realtime: bool = False) -> list[StreamSource]:
    """The streams of the command line: ``URL``, ``NAME=URL`` or a file's path (with ``realtime``); names
    are made from the URL (host, port and path) and made unique with ``-2``, ``-3``, ..."""
    if not inputs:
        raise ConfigError("watch needs at least one stream URL")
    sources, seen = [], set()
    for text in inputs:
        named = _NAMED.match(text)
        name, url = (named.group(1), named.group(2)) if named and not Path(text).exists() else (None, text)
        is_file = not _SCHEME.match(url) or url.startswith("file://")
        if is_file:
            path = Path(url.removeprefix("file://"))
            if not path.is_file():
                raise ConfigError(f"stream {url} is neither a URL (scheme://...) nor a video file; check it")
            if not realtime:
                raise ConfigError(f"{url} is a file, not a live stream; pass --realtime to play it at its frame "
                                  "rate (or classify it whole with 'foldedcnns predict')")
        base = name or _default_name(url, is_file)
        unique, n = base, 1
        while unique in seen:
            n += 1
            unique = f"{base}-{n}"
        if name is not None and unique != name:
            raise ConfigError(f"two streams are named {name}; give each its own NAME=URL")
        seen.add(unique)
        sources.append(StreamSource(unique, url, is_file))
    return sources


class StreamReader(threading.Thread):
    """Decode ``source`` into ``batcher`` until ``stop`` is set (or the file ends, or the stream fails for
    good), reopening it after each end or error (see the module doc). ``index`` is the stream's index in the
    batcher; ``stats`` its counters; ``on_event(kind, count)`` follows them for the metrics (``received``,
    ``reconnect``, ``connected``, ``disconnected``)."""

    def __init__(self, index: int, source: StreamSource, views: Sequence[ViewSpec], batcher: LiveBatcher,
                 stop: threading.Event, stats: StreamStats, *, realtime: bool = False,
                 timeouts: tuple[float, float] = (OPEN_TIMEOUT_S, READ_TIMEOUT_S),
                 on_event: Callable[[str, int], None] | None = None) -> None:
        super().__init__(name=f"watch-{source.name}", daemon=True)
        self.index, self.source, self.batcher, self.stop, self.stats = index, source, batcher, stop, stats
        self.samplers = [FrameSampler(v.size, v.crop, source.name) for v in views]
        self.realtime, self.timeouts = realtime, timeouts
        self.on_event = on_event or (lambda kind, count: None)
        self._frame = 0
        self._failures = 0  # consecutive opens without a frame

    def run(self) -> None:
        while not self.stop.is_set():
            why = self._follow()
            if self.stop.is_set() or self.stats.status == "failed":
                break
            if self.source.is_file:
                self.stats.status = "ended" if why is None else "failed"
                self.stats.error = why
                if why is not None:
                    LOG.warning("watch: stream %s failed: %s", self.source.name, why)
                return
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** self._failures)
            self._failures += 1
            self.stats.reconnects += 1
            self.stats.status, self.stats.error = "reconnecting", why
            self.on_event("reconnect", 1)
            LOG.warning("watch: stream %s %s; reconnecting in %.2g s (reconnect %d)", self.source.name,
                        why or "ended", delay, self.stats.reconnects)
            self.stop.wait(delay)
        if self.stats.status != "failed":
            self.stats.status = "stopped"

    def _follow(self) -> str | None:
        """Open the stream and decode it until it ends (None), fails (the reason) or ``stop`` is set."""
        import av

        try:
            container = av.open(self.source.url.removeprefix("file://"), timeout=self.timeouts,
                                options={} if self.source.is_file else OPEN_OPTIONS)
        except (av.error.FFmpegError, OSError) as exc:
            return f"cannot be opened ({first_line(exc)})"
        try:
            if not container.streams.video:
                return "has no video stream"
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            self.stats.status = "open"
            self.on_event("connected", 1)
            return self._decode(container, stream)
        except av.error.FFmpegError as exc:
            return f"failed ({first_line(exc)})"
        except FoldedCNNsError as exc:  # a crop outside the frames (ConfigError): fatal for this stream
            self.stats.status, self.stats.error = "failed", str(exc)
            LOG.warning("watch: stream %s failed: %s", self.source.name, exc)
            return str(exc)
        finally:
            self.on_event("disconnected", 1)
            container.close()

    def _decode(self, container: Any, stream: Any) -> str | None:
        import av

        stats = DecodeStats()
        start: float | None = None
        first_pts = 0.0
        try:
            for frame in pyav_frames(container.demux(stream), stream, stats):
                if self.stop.is_set():
                    return None
                pts = None if frame.pts is None or frame.time is None else float(frame.time)
                if self.realtime and pts is not None:
                    if start is None:
                        start, first_pts = time.monotonic(), pts
                    if self.stop.wait(max(0.0, start + (pts - first_pts) - time.monotonic())):
                        return None
                received, received_mono = time.time(), time.monotonic()
                views = [sampler.from_av(frame) for sampler in self.samplers]
                item = LiveFrame(self.index, self._frame, pts, received, received_mono, views)
                if not self.batcher.put(item):
                    return None
                self._frame += 1
                self._failures = 0
                self.stats.received += 1
                self.on_event("received", 1)
        except (av.error.FFmpegError, CutStream, OSError) as exc:  # this connection only: reopened
            return f"failed ({first_line(exc)})"
        finally:
            self.stats.damaged_packets += stats.damaged_packets
        return None
