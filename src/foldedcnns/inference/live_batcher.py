"""One batcher for the frames of many live streams: batches in multiples of f across streams, within a latency bound.

Every stream's reader thread :meth:`~LiveBatcher.put`\\ s its decoded frames into a bounded queue of its own;
the model thread :meth:`~LiveBatcher.take`\\ s batches that mix the streams' frames, oldest first. F is the
least common multiple of the models' folds, N the largest batch (a multiple of F), L ``max_latency_ms``,
and ``cost(n)`` the time a batch of n frames is expected to take on the models (:class:`BatchCost`, measured
as it runs). A frame's latency is the time from its decoding to its row.

* **No wait when a group of f is there.** When the model thread asks, a batch takes the oldest
  ``min(N, P - P mod F)`` of the P waiting frames at once (no padding), and also the rest when they could not
  wait for the next batch (``age + cost(this) + cost(next) > L``).
* **A batch starts early enough.** With fewer than F frames waiting, it waits for more only until the oldest
  frame's age reaches ``L - cost(F) - s``, then goes padded (s: 5 % of L, 1 to 20 ms, so that a thread
  woken a little late still starts the batch rather than dropping its frames).
* **Behind: the oldest frames are dropped, and counted.** A frame whose age plus the cost of the batch it
  would join exceeds L cannot make the bound in this batch or any later one: the oldest such frames are
  dropped (reason ``late``) before the batch is formed. With ``drop=False`` nothing is dropped and the lag
  grows instead.
* **Memory is bounded.** Each stream's queue holds at most ``queue_frames`` frames; a full queue drops its
  oldest frame (reason ``queue_full``), or with ``drop=False`` blocks the stream's reader (which then stops
  reading from the network: the sender sees back-pressure).
* **Closing** (a signal, or every stream ended): :meth:`close` refuses new frames; :meth:`take` then returns
  everything still queued, without waiting and without dropping, and None once the queues are empty.
"""

from __future__ import annotations

import heapq
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from foldedcnns.errors import ConfigError

DEFAULT_QUEUE_FRAMES = 128
COST_WINDOW = 32          # batches the cost estimate remembers (their median slowdown and largest hiccup)
COST_PRIOR = 3            # ... of which, at first, this many are the warm-up's own timings (ratio 1)
WRITE_MARGIN_S = 0.005    # rows written and flushed after the model (JSON, a flush per stream)
START_SLACK = 0.05        # a waiting batch starts this share of L (1 to 20 ms) before its oldest frame would be late
DROP_LATE, DROP_QUEUE_FULL = "late", "queue_full"


@dataclass
class LiveFrame:
    """A decoded frame of stream ``stream`` (an index): its number in the stream (counted over reconnects),
    its presentation time in seconds, when it was decoded (wall clock and monotonic), and one model-ready view
    per model."""

    stream: int
    frame: int
    pts: float | None
    received: float
    received_mono: float
    views: list[np.ndarray] = field(repr=False)


class BatchCost:
    """Expected seconds of a batch of n frames on the models: a line ``a + b * slots`` through two warm-up
    timings (slots: n rounded up to a multiple of F), times the median ratio of measured to expected time
    over the last 32 batches (a steady slowdown, such as decoding taking CPU from the model, grows with the
    work), plus the largest excess of a batch over that plan in the same window (a hiccup, such as a thread
    woken late, adds seconds whatever the batch's size).

    Not the largest ratio, as it was: with sixteen 320x240 streams at f=1 one batch ran 66x slower than planned
    (while the streams opened), the next batch of 11 frames was planned at 379 ms instead of 6, and frames 5 ms
    old were dropped as late (``benchmarks/live.py``)."""

    def __init__(self, fold: int, small: float, large: float, large_slots: int) -> None:
        self.fold = fold
        per_slot = max(0.0, (large - small) / max(large_slots - fold, 1))
        self.fixed = max(small - per_slot * fold, 0.0)
        self.per_slot = per_slot
        self._ratios: deque[float] = deque([1.0] * COST_PRIOR, maxlen=COST_WINDOW)  # the warm-up, as batches
        self._excess: deque[float] = deque(maxlen=COST_WINDOW)
        self._scale = 1.0
        self._spike = 0.0

    def slots(self, frames: int) -> int:
        return -(-frames // self.fold) * self.fold

    def _line(self, frames: int) -> float:
        return self.fixed + self.per_slot * self.slots(frames)

    def __call__(self, frames: int) -> float:
        return self._line(frames) * self._scale + self._spike + WRITE_MARGIN_S

    def observe(self, frames: int, seconds: float) -> None:
        expected = self._line(frames)
        if expected > 0:
            self._ratios.append(seconds / expected)
            self._scale = max(1.0, statistics.median(self._ratios))
            self._excess.append(max(0.0, seconds - expected * self._scale))
            self._spike = max(self._excess)


class LiveBatcher:
    """The batcher of the module doc for ``streams`` streams; ``on_drop(stream, reason, count)`` is called
    (under the batcher's lock: keep it quick) for every dropped frame."""

    def __init__(self, streams: int, *, fold: int, max_batch: int, max_latency_ms: float, cost: BatchCost,
                 drop: bool = True, queue_frames: int = DEFAULT_QUEUE_FRAMES,
                 on_drop: Callable[[int, str, int], None] | None = None) -> None:
        if max_latency_ms <= 0 or not math.isfinite(max_latency_ms):
            raise ConfigError(f"--max-latency-ms must be a number > 0, got {max_latency_ms!r}")
        if queue_frames < 1:
            raise ConfigError(f"--queue-frames must be >= 1, got {queue_frames}")
        self.fold = fold
        self.max_batch = max(fold, max_batch // fold * fold)
        self.bound = max_latency_ms / 1000.0
        self._slack = min(0.02, max(0.001, START_SLACK * self.bound))  # a late wake-up does not drop the frames
        self.cost, self.drop, self.queue_frames = cost, drop, queue_frames
        self._queues: list[deque[LiveFrame]] = [deque() for _ in range(streams)]
        self._pending = 0
        self._closed = False
        self._cond = threading.Condition()
        self._on_drop = on_drop or (lambda stream, reason, count: None)

    @property
    def pending(self) -> int:
        return self._pending

    def queued(self, stream: int) -> int:
        return len(self._queues[stream])

    def put(self, item: LiveFrame) -> bool:
        """Queue a frame; False (the frame is not taken) once the batcher is closed. A full queue drops its
        oldest frame, or with ``drop=False`` waits for room."""
        queue = self._queues[item.stream]
        with self._cond:
            while len(queue) >= self.queue_frames and not self._closed:
                if self.drop:
                    queue.popleft()
                    self._pending -= 1
                    self._on_drop(item.stream, DROP_QUEUE_FULL, 1)
                else:
                    self._cond.wait()
            if self._closed:
                return False
            queue.append(item)
            self._pending += 1
            self._cond.notify_all()
        return True

    def close(self) -> None:
        """Refuse new frames; :meth:`take` hands out what is queued, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def discard(self) -> int:
        """Drop everything queued (a stop that cannot wait); returns how many frames."""
        with self._cond:
            count, self._pending = self._pending, 0
            for queue in self._queues:
                queue.clear()
            self._cond.notify_all()
        return count

    def _oldest(self) -> float:
        return min(q[0].received_mono for q in self._queues if q)

    def _pop(self, count: int) -> list[LiveFrame]:
        """The ``count`` oldest frames over all streams (each stream's frames stay in order)."""
        heads = [(q[0].received_mono, i) for i, q in enumerate(self._queues) if q]
        heapq.heapify(heads)
        out = []
        while heads and len(out) < count:
            _, i = heapq.heappop(heads)
            queue = self._queues[i]
            out.append(queue.popleft())
            if queue:
                heapq.heappush(heads, (queue[0].received_mono, i))
        self._pending -= len(out)
        self._cond.notify_all()  # room for a reader waiting with drop=False
        return out

    def _drop_late(self, now: float) -> None:
        """Drop the oldest frames that would miss the bound in the batch they would join (module doc)."""
        while self._pending:
            size = min(self.max_batch, self._pending)
            if now - self._oldest() + self.cost(size) <= self.bound:
                return
            late = self._pop(1)[0]
            self._on_drop(late.stream, DROP_LATE, 1)

    def _batch_size(self, now: float) -> int | None:
        """How many frames the next batch takes now, or None to wait (module doc)."""
        pending = self._pending
        if self._closed:
            return min(self.max_batch, pending)
        whole = min(self.max_batch, pending - pending % self.fold)
        if whole == 0:
            return pending if now - self._oldest() + self.cost(self.fold) >= self.bound - self._slack else None
        if whole < pending and whole < self.max_batch:
            rest = sorted(f.received_mono for q in self._queues for f in q)[whole]
            if now - rest + self.cost(whole) + self.cost(self.fold) > self.bound:
                return min(self.max_batch, pending)
        return whole

    def take(self, poll_s: float = 0.5) -> list[LiveFrame] | None:
        """The next batch (blocks until one is due), or None when closed and empty."""
        with self._cond:
            while True:
                now = time.monotonic()
                if self.drop and not self._closed:
                    self._drop_late(now)
                if not self._pending:
                    if self._closed:
                        return None
                    self._cond.wait(poll_s)
                    continue
                size = self._batch_size(now)
                if size:
                    return self._pop(size)
                due = self._oldest() + self.bound - self._slack - self.cost(self.fold)
                self._cond.wait(max(0.0005, min(poll_s, due - now)))
