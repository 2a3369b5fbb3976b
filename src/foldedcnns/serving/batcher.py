"""``DynamicBatcher``: gather the images of many asyncio callers into model batches in multiples of f.

Example (inside any asyncio service)::

    from foldedcnns.inference import Predictor
    from foldedcnns.serving import DynamicBatcher

    async with DynamicBatcher(Predictor("best.pt"), max_batch_images=64) as batcher:
        preds = await batcher.submit(images)        # uint8 (n, H, W, 3) at the model's input size

Rules:

* No wait when it buys nothing (Triton's default): with ``max_delay_ms`` D = 0, the default, a batch
  starts the moment a model slot is free and anything is waiting, so a lone request on an idle server
  goes straight to the model. Batches still form under load: at most ``max_concurrent_batches`` batches
  run at a time, on a worker thread (never on the event loop); while one runs the queue fills, and the
  next batch takes up to N images of it at once. When a whole batch of N waits while every model thread
  is busy, it is handed over at once and queues behind them (one such batch at most): the model then goes
  from one full batch to the next without waiting for the event loop to answer the last one (64-image
  requests, ``benchmarks/serve.py``). With D > 0 a batch that is not full also waits until
  the oldest waiting image has waited D (or N = ``max_batch_images`` images wait, or a drain starts):
  worth it only when a batch of N costs the model much less per image than the batches that form by
  themselves.
* A lone batch of at most f images, nothing else waiting or running, runs on the event loop (no thread
  hand-offs) when :attr:`DynamicBatcher.alone` (default unset: never) says no other request is in flight.
* A batch holds at most N images. Its last partial group of f is padded by the project's one
  rule (:func:`foldedcnns.core.pad_to_multiple`, inside ``Predictor.predict_batch``) and the pad is
  counted as padded slots. By default images of different requests share fold groups; with
  ``isolate_requests`` every request is padded to a multiple of f on its own, so a request of n
  images gets exactly what ``Predictor.predict`` gives those n images.
* The queue is bounded in images (``max_queue_images``): past it :class:`QueueFull` at once. A request
  not taken into a batch before its deadline gets :class:`DeadlineExceeded` and costs no model time.
  A model error fails only the requests of that batch (:class:`BatchFailed`); the batcher goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from foldedcnns.core.folding import batch_or_default, pad_to_multiple
from foldedcnns.errors import ConfigError, DataError, first_line
from foldedcnns.inference.predictor import Predictions
from foldedcnns.serving.errors import BatchFailed, DeadlineExceeded, QueueFull, RequestTooLarge, ShuttingDown

DEFAULT_BATCH_IMAGES = 64     # N, rounded up to a multiple of the fold
DEFAULT_DELAY_MS = 0.0        # D: no wait (see the module doc)
DEFAULT_QUEUE_IMAGES = 1024   # Q


class BatchPredictor(Protocol):
    """What the batcher needs of a :class:`~foldedcnns.inference.Predictor`."""

    fold: int
    class_names: tuple[str, ...]

    @property
    def input_hw(self) -> tuple[int, int]: ...

    def predict_batch(self, images: np.ndarray) -> Predictions: ...


class Observer:
    """Hooks the batcher calls (``foldedcnns.serving.metrics.ServingMetrics`` records them); no-ops."""

    def queue_depth(self, images: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, images: int, padded: int, requests: int, seconds: float) -> None: ...


@dataclass(eq=False)
class _Pending:
    images: np.ndarray
    future: asyncio.Future
    enqueued: float
    taken: int = 0                       # images handed to batches
    done: int = 0                        # images answered
    parts: list[tuple[int, Predictions]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class _Slice:
    pending: _Pending
    start: int
    count: int


class DynamicBatcher:
    """Batch the images of concurrent :meth:`submit` calls for one predictor (see the module doc)."""

    def __init__(self, predictor: BatchPredictor, *, max_batch_images: int | None = None,
                 max_delay_ms: float = DEFAULT_DELAY_MS, max_queue_images: int = DEFAULT_QUEUE_IMAGES,
                 isolate_requests: bool = False, request_timeout_ms: float | None = None,
                 max_concurrent_batches: int = 1, observer: Observer | None = None,
                 executor: Executor | None = None) -> None:
        self.predictor = predictor
        self.fold = int(predictor.fold)
        self.max_batch_images = batch_images(self.fold, max_batch_images)
        if max_delay_ms < 0 or max_queue_images < 1 or max_concurrent_batches < 1:
            raise ConfigError("--max-delay-ms must be >= 0, --max-queue-images >= 1 and concurrent batches >= 1, "
                              f"got {max_delay_ms}, {max_queue_images}, {max_concurrent_batches}")
        if request_timeout_ms is not None and request_timeout_ms <= 0:
            raise ConfigError(f"--request-timeout-ms must be > 0 (or 0 for none), got {request_timeout_ms}")
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue_images = max_queue_images
        self.isolate_requests = isolate_requests
        self.request_timeout = None if request_timeout_ms is None else request_timeout_ms / 1000.0
        self.observer = observer or Observer()
        self._executor = executor
        self._own_executor = executor is None
        self._concurrency = max_concurrent_batches
        self._queue: deque[_Pending] = deque()
        self._queued = 0
        self._running: set[asyncio.Task] = set()
        self._wakeup: asyncio.Event | None = None
        self._busy = 0  # batches handed to the model threads, not yet answered
        self._loop_task: asyncio.Task | None = None
        self._closing = False
        self._flushing = False
        self.alone: Callable[[], bool] | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> DynamicBatcher:
        if self._loop_task is None:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix="foldedcnns-model")
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="foldedcnns-batcher")
        return self

    def flush(self) -> None:
        """From now on run what is queued at once, without waiting D for a fuller batch (a server's drain)."""
        self._flushing = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self) -> None:
        """Stop taking requests, run everything queued at once (no delay), wait for every answer."""
        self._closing = self._flushing = True
        if self._loop_task is not None:
            self._wakeup.set()
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> DynamicBatcher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def queued_images(self) -> int:
        return self._queued

    @property
    def closing(self) -> bool:
        return self._closing

    # -- requests -----------------------------------------------------------------------------------

    def check_room(self, images: int) -> None:
        """Refuse ``images`` more images now: :class:`ShuttingDown` once closing, :class:`RequestTooLarge` when
        they could never fit the queue, :class:`QueueFull` when it has no room for them now. The server calls it
        from a request's headers, before reading the body; :meth:`submit` calls it again."""
        if self._closing:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if images:
            check_request_images(images, self.max_queue_images)
        if self._queued + images > self.max_queue_images:
            raise QueueFull(f"queue full ({self._queued} of {self.max_queue_images} images waiting); retry later")

    async def submit(self, images: np.ndarray, *, timeout_s: float | None = None,
                     arrived: float | None = None) -> Predictions:
        """Classify ``images`` (uint8 ``(n, H, W, 3)`` at the model's size); answers in input order.

        ``timeout_s`` (default: the batcher's ``request_timeout_ms``) bounds the time from ``arrived``
        (the event loop's ``time()`` when the request came in; default now) until the request is taken
        into a batch; past it :class:`DeadlineExceeded`, and no model time is spent.
        """
        if self._loop_task is None:
            raise RuntimeError("start the batcher first: 'async with DynamicBatcher(...)' or 'await start()'")
        images = self._check(images)
        n = len(images)
        self.check_room(n)
        if n == 0:
            return Predictions.concatenate([], self.predictor.class_names)
        loop = asyncio.get_running_loop()
        pending = _Pending(images, loop.create_future(), loop.time())
        timeout = self.request_timeout if timeout_s is None else timeout_s
        if timeout is not None:
            start = pending.enqueued if arrived is None else arrived
            pending.timer = loop.call_at(start + timeout, self._expire, pending, timeout)
        self._queue.append(pending)
        self._set_queued(self._queued + n)
        self._wakeup.set()
        return await pending.future

    def _check(self, images: np.ndarray) -> np.ndarray:
        height, width = self.predictor.input_hw
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
            raise DataError(f"expected uint8 images (n, {height}, {width}, 3), got {images.dtype} {images.shape}")
        return images

    def _set_queued(self, images: int) -> None:
        self._queued = images
        self.observer.queue_depth(images)

    def _expire(self, pending: _Pending, timeout: float) -> None:
        if pending.taken or pending.future.done():
            return
        self._queue.remove(pending)
        self._set_queued(self._queued - len(pending))
        pending.future.set_exception(DeadlineExceeded(
            f"not started within its deadline of {timeout * 1000:.0f} ms (queue: {self._queued} images)"))

    # -- the batching loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not await self._wait_for_batch(loop):
                return
            if not self._model_free():
                self._wakeup.clear()
                await self._wakeup.wait()  # a batch finished, or a request came (it may fill a batch)
                continue
            slices = self._cut()
            if not slices:
                continue
            if self._lone(slices):
                self._run_here(slices, loop)
                continue
            self._busy += 1
            # The model thread's future answers the batch from a callback: no task of its own per batch.
            future = loop.run_in_executor(self._executor, self._compute, slices)
            self._running.add(future)
            future.add_done_callback(functools.partial(self._finish, slices))

    def _model_free(self) -> bool:
        """Whether a batch may be handed to the model threads now: one of them is free, or they are all busy
        and a whole batch of N waits, which then queues behind them (one at most), so the model goes from one
        full batch to the next without waiting for the event loop in between."""
        return self._busy < self._concurrency or (self._busy == self._concurrency
                                                  and self._queued >= self.max_batch_images)

    def _lone(self, slices: list[_Slice]) -> bool:
        return (self.alone is not None and self._busy == 0 and not self._queue
                and sum(s.count for s in slices) <= self.fold and self.alone())

    def _run_here(self, slices: list[_Slice], loop: asyncio.AbstractEventLoop) -> None:
        """Run a lone batch on the event loop; answered as a model thread's (:meth:`_finish`; a fault too)."""
        future, self._busy = loop.create_future(), self._busy + 1
        try:
            future.set_result(self._compute(slices))
        except Exception as exc:
            future.set_exception(exc)
        self._finish(slices, future)

    async def _wait_for_batch(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Wait until a batch should start (True) or the batcher is closed and empty (False)."""
        while True:
            if self._queued >= self.max_batch_images or (self._queue and self._flushing):
                return True
            if not self._queue and self._closing:
                return False
            timeout = None
            if self._queue:
                timeout = self._queue[0].enqueued + self.max_delay - loop.time()
                if timeout <= 0:
                    return True
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _cut(self) -> list[_Slice]:
        """Take up to N images (in slots: a request padded on its own when isolated) off the queue head."""
        loop_time = asyncio.get_running_loop().time()
        slices, room, f = [], self.max_batch_images, self.fold
        while self._queue and room > 0:
            pending = self._queue[0]
            left = len(pending) - pending.taken
            if self.isolate_requests:
                need = -(-left // f) * f
                take = left if need <= room else room // f * f
                used = need if need <= room else take
                if take == 0:
                    break
            else:
                take = used = min(left, room)
            if pending.taken == 0:
                if pending.timer is not None:
                    pending.timer.cancel()
                self.observer.queue_wait(loop_time - pending.enqueued)
            slices.append(_Slice(pending, pending.taken, take))
            pending.taken += take
            room -= used
            if pending.taken == len(pending):
                self._queue.popleft()
        self._set_queued(self._queued - sum(s.count for s in slices))
        return slices

    def _compute(self, slices: list[_Slice]) -> tuple[Predictions, list[int], int, float]:
        """On the model thread: stack, (isolated: pad each request), predict. Returns rows per slice."""
        clock = time.perf_counter()
        arrays, offsets, offset = [], [], 0
        for s in slices:
            images = s.pending.images[s.start:s.start + s.count]
            if self.isolate_requests:
                images, _ = pad_to_multiple(images, self.fold)
            arrays.append(images)
            offsets.append(offset)
            offset += len(images)
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        padded_slots = (-len(batch)) % self.fold + (len(batch) - sum(s.count for s in slices))
        return self.predictor.predict_batch(batch), offsets, padded_slots, time.perf_counter() - clock

    def _finish(self, slices: list[_Slice], future: asyncio.Future) -> None:
        """On the event loop, when a batch is done: free its model slot, then answer its requests."""
        self._running.discard(future)
        self._busy -= 1
        self._wakeup.set()
        if future.cancelled() or future.exception() is not None:  # a model fault fails this batch's requests only
            self._fail(slices, future.exception() if not future.cancelled() else asyncio.CancelledError())
            return
        preds, offsets, padded, seconds = future.result()
        self.observer.batch(sum(s.count for s in slices), padded, len({id(s.pending) for s in slices}), seconds)
        for s, offset in zip(slices, offsets, strict=True):
            pending = s.pending
            if pending.future.done():
                continue
            if s.start == 0 and s.count == len(pending):  # the whole request in this batch: no concatenation
                pending.done = s.count
                pending.future.set_result(_rows(preds, offset, s.count))
                continue
            pending.parts.append((s.start, _rows(preds, offset, s.count)))
            pending.done += s.count
            if pending.done == len(pending):
                parts = [p for _, p in sorted(pending.parts, key=lambda item: item[0])]
                pending.future.set_result(Predictions.concatenate(parts, preds.class_names))

    def _fail(self, slices: list[_Slice], exc: BaseException) -> None:
        error = BatchFailed(f"the model failed on a batch of {sum(s.count for s in slices)} images: "
                            f"{type(exc).__name__}: {first_line(exc)}")
        for pending in {id(s.pending): s.pending for s in slices}.values():
            if pending.taken < len(pending) and pending in self._queue:  # drop the rest of a split request
                self._queue.remove(pending)
                self._set_queued(self._queued - (len(pending) - pending.taken))
            if not pending.future.done():
                pending.future.set_exception(error)


def batch_images(fold: int, max_batch_images: int | None = None) -> int:
    """N: ``max_batch_images``, which must be a multiple of ``fold``, or the default 64 rounded up to one."""
    return batch_or_default(max_batch_images, fold, DEFAULT_BATCH_IMAGES, "--max-batch-images")


def check_request_images(images: int, max_queue_images: int) -> None:
    """A request larger than the whole queue can never be taken: :class:`RequestTooLarge` (413) at once."""
    if images > max_queue_images:
        raise RequestTooLarge(f"a request of {images} images exceeds --max-queue-images {max_queue_images}; "
                              "send fewer images per request")


def _rows(preds: Predictions, start: int, count: int) -> Predictions:
    stop = start + count
    return Predictions(preds.labels[start:stop], preds.scores[start:stop], preds.probabilities[start:stop],
                       preds.class_names)


def describe(batcher: DynamicBatcher) -> dict[str, Any]:
    """The batcher's knobs, for ``GET /v1/model`` and logs."""
    return {"max_batch_images": batcher.max_batch_images, "max_delay_ms": batcher.max_delay * 1000,
            "max_queue_images": batcher.max_queue_images, "isolate_requests": batcher.isolate_requests,
            "request_timeout_ms": None if batcher.request_timeout is None else batcher.request_timeout * 1000}


__all__ = ["DynamicBatcher", "Observer", "describe"]
