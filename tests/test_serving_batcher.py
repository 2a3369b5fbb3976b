"""DynamicBatcher on its own (asyncio, no HTTP): groups of f, N and D, queue bound, deadlines, faults, isolation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from foldedcnns.core.folding import pad_to_multiple
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.inference import Predictions
from foldedcnns.serving import (
    BatchFailed,
    DeadlineExceeded,
    DynamicBatcher,
    QueueFull,
    RequestTooLarge,
    ShuttingDown,
)
from foldedcnns.serving.batcher import Observer
from foldedcnns.serving.metrics import require

POISON = 255  # an image whose first pixel is this makes the fake model fail


class FakePredictor:
    """A folded 'model' on 1 x 2 images: image i's score is the mean first pixel of its group of f (padded by
    the project's rule), its label the image's own first pixel. So a label says whose image it is, and a
    score says which images shared its group."""

    def __init__(self, fold: int, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.fold, self.delay, self.gate = fold, delay, gate
        self.class_names = tuple(str(i) for i in range(256))
        self.batches: list[int] = []

    @property
    def input_hw(self) -> tuple[int, int]:
        return (1, 2)

    def predict_batch(self, images: np.ndarray) -> Predictions:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        self.batches.append(len(images))
        first = images[:, 0, 0, 0].astype(np.int64)
        if (first == POISON).any():
            raise RuntimeError("poisoned input")
        padded, _ = pad_to_multiple(torch.from_numpy(first), self.fold)
        groups = padded.reshape(-1, self.fold).double().mean(dim=1).repeat_interleave(self.fold)[:len(first)]
        probabilities = np.zeros((len(first), 256), np.float32)
        return Predictions(first, groups.numpy().astype(np.float32), probabilities, self.class_names)


def images(*values: int) -> np.ndarray:
    out = np.zeros((len(values), 1, 2, 3), np.uint8)
    out[:, 0, 0, 0] = values
    return out


class Recorder(Observer):
    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int]] = []

    def batch(self, images: int, padded: int, requests: int, seconds: float) -> None:
        self.batches.append((images, padded, requests))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_batches_are_cut_at_n_in_multiples_of_f_and_every_request_gets_its_own_answer():
    async def main():
        model, seen = FakePredictor(4), Recorder()
        async with DynamicBatcher(model, max_batch_images=8, max_delay_ms=100, observer=seen) as batcher:
            results = await asyncio.gather(*(batcher.submit(images(v)) for v in range(1, 11)))
        return model, seen, results

    model, seen, results = run(main())
    assert [r.labels.tolist() for r in results] == [[v] for v in range(1, 11)]
    assert model.batches == [8, 2]
    assert seen.batches == [(8, 0, 8), (2, 2, 2)]  # the last group of 2 is padded to 4: 2 padded slots


def test_default_n_is_64_rounded_up_to_the_fold_and_a_given_n_must_be_a_multiple():
    assert DynamicBatcher(FakePredictor(3)).max_batch_images == 66
    with pytest.raises(ConfigError, match="not a multiple of the fold 4"):
        DynamicBatcher(FakePredictor(4), max_batch_images=10)
    with pytest.raises(ConfigError):
        DynamicBatcher(FakePredictor(1), max_queue_images=0)


def test_a_lone_request_waits_d_and_a_full_batch_does_not_wait():
    async def main():
        async with DynamicBatcher(FakePredictor(2), max_batch_images=4, max_delay_ms=150) as batcher:
            start = time.perf_counter()
            await batcher.submit(images(1))
            lone = time.perf_counter() - start
        async with DynamicBatcher(FakePredictor(2), max_batch_images=4, max_delay_ms=10_000) as batcher:
            start = time.perf_counter()
            await batcher.submit(images(1, 2, 3, 4))
            full = time.perf_counter() - start
        return lone, full

    lone, full = run(main())
    assert 0.14 <= lone < 2.0
    assert full < 2.0


class FrozenClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock never moves: no timer ever fires, so only a dispatch that waits for
    nothing can reach the model."""

    def time(self) -> float:
        return 1000.0


def on_frozen_clock(coro_fn, seconds: float = 20.0):
    """Run ``coro_fn()`` on a FrozenClockLoop in a thread; its result, or None if it did not finish in
    ``seconds`` (then it is cancelled, and the loop closed)."""
    box: dict = {}
    loop = FrozenClockLoop()
    task = loop.create_task(coro_fn())

    def main() -> None:
        try:
            box["result"] = loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
    return box.get("result")


def test_the_default_is_no_wait_so_a_lone_request_runs_at_once():
    from foldedcnns.serving.batcher import DEFAULT_DELAY_MS

    assert DEFAULT_DELAY_MS == 0

    async def main():
        model = FakePredictor(4)
        async with DynamicBatcher(model, max_batch_images=64) as batcher:
            result = await batcher.submit(images(7))
        return model.batches, result.labels.tolist()

    # The loop's clock stands still, so the old rule (start once the oldest has waited D) never starts
    # the batch; the request must reach the model without any timer.
    assert on_frozen_clock(main) == ([1], [7])


def test_with_no_wait_batches_still_fill_under_concurrent_load():
    gate = threading.Event()

    async def main():
        model, seen = FakePredictor(2, gate=gate), Recorder()
        async with DynamicBatcher(model, max_batch_images=8, observer=seen) as batcher:
            first = asyncio.ensure_future(batcher.submit(images(1)))
            for _ in range(100):  # the lone request is taken at once (a timer never fires here)
                await asyncio.sleep(0)
            rest = [asyncio.ensure_future(batcher.submit(images(v))) for v in range(2, 22)]  # 20 arrive meanwhile
            for _ in range(100):
                await asyncio.sleep(0)
            queued = batcher.queued_images
            gate.set()
            answers = await asyncio.gather(first, *rest)
        return model.batches, seen.batches, queued, [a.labels.tolist() for a in answers]

    try:
        result = on_frozen_clock(main, seconds=10)
    finally:
        gate.set()
    assert result is not None, "the batcher waited for a timer"
    batches, seen, queued, answers = result
    assert queued == 12                       # they queued while the model was busy, but for one whole batch
    #                                           of N, handed over at once to wait behind the running one...
    assert batches == [1, 8, 8, 4]            # ...and went in full batches of N as soon as it was free
    assert [b[0] for b in seen] == [1, 8, 8, 4] and answers == [[v] for v in range(1, 22)]


def test_a_request_larger_than_n_is_split_and_answered_in_order():
    async def main():
        model = FakePredictor(4)
        async with DynamicBatcher(model, max_batch_images=8, max_delay_ms=1) as batcher:
            result = await batcher.submit(images(*range(20)))
        return model, result

    model, result = run(main())
    assert result.labels.tolist() == list(range(20))
    assert model.batches == [8, 8, 4]


def test_the_queue_is_bounded_in_images():
    async def main():
        async with DynamicBatcher(FakePredictor(1), max_batch_images=16, max_delay_ms=300,
                                  max_queue_images=8) as batcher:
            accepted = [asyncio.ensure_future(batcher.submit(images(v))) for v in range(8)]
            await asyncio.sleep(0.01)
            assert batcher.queued_images == 8
            with pytest.raises(QueueFull, match="queue full"):
                await batcher.submit(images(9))
            with pytest.raises(RequestTooLarge):
                await batcher.submit(images(*range(9)))
            return [r.labels.tolist() for r in await asyncio.gather(*accepted)]

    assert run(main()) == [[v] for v in range(8)]


def test_an_expired_deadline_costs_no_model_time():
    async def main():
        model = FakePredictor(1)
        async with DynamicBatcher(model, max_batch_images=8, max_delay_ms=2000) as batcher:
            with pytest.raises(DeadlineExceeded, match="deadline of 50 ms"):
                await batcher.submit(images(1), timeout_s=0.05)
            assert batcher.queued_images == 0
        return model

    assert run(main()).batches == []


def test_a_model_fault_fails_only_its_batch():
    async def main():
        model = FakePredictor(2)
        async with DynamicBatcher(model, max_batch_images=4, max_delay_ms=50) as batcher:
            first = [asyncio.ensure_future(batcher.submit(images(v))) for v in (1, POISON, 3, 4)]
            bad = await asyncio.gather(*first, return_exceptions=True)
            good = await asyncio.gather(*(batcher.submit(images(v)) for v in (5, 6, 7)))
        return bad, good

    bad, good = run(main())
    assert all(isinstance(r, BatchFailed) and "poisoned input" in str(r) for r in bad)
    assert [r.labels.tolist() for r in good] == [[5], [6], [7]]


def test_isolated_requests_get_exactly_what_they_get_alone():
    requests = [images(*range(10 * k, 10 * k + n)) for k, n in enumerate((1, 3, 5, 4, 2))]

    async def main(isolate: bool):
        seen = Recorder()
        async with DynamicBatcher(FakePredictor(4), max_batch_images=32, max_delay_ms=50,
                                  isolate_requests=isolate, observer=seen) as batcher:
            return await asyncio.gather(*(batcher.submit(r) for r in requests)), seen

    isolated, seen = run(main(True))
    alone = [FakePredictor(4).predict_batch(r) for r in requests]
    for got, want in zip(isolated, alone, strict=True):
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    assert seen.batches == [(15, 9, 5)]  # 1+3+5+4+2 = 15 images in 4+4+8+4+4 = 24 slots: 9 padded
    shared, _ = run(main(False))
    assert any(not np.allclose(g.scores, w.scores) for g, w in zip(shared, alone, strict=True))


def test_isolation_splits_a_large_request_at_group_boundaries():
    async def main():
        model = FakePredictor(4)
        async with DynamicBatcher(model, max_batch_images=8, max_delay_ms=1, isolate_requests=True) as batcher:
            return model, await batcher.submit(images(*range(1, 11)))

    model, result = run(main())
    np.testing.assert_allclose(result.scores, FakePredictor(4).predict_batch(images(*range(1, 11))).scores)
    assert model.batches == [8, 4]


def test_close_runs_what_is_queued_at_once_then_refuses_new_work():
    async def main():
        batcher = await DynamicBatcher(FakePredictor(1), max_batch_images=64, max_delay_ms=60_000).start()
        pending = [asyncio.ensure_future(batcher.submit(images(v))) for v in range(5)]
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        await batcher.close()
        results = await asyncio.gather(*pending)
        with pytest.raises(ShuttingDown):
            await batcher.submit(images(1))
        return time.perf_counter() - start, results

    seconds, results = run(main())
    assert seconds < 5 and [r.labels.tolist() for r in results] == [[v] for v in range(5)]


def test_flush_keeps_taking_requests_and_skips_the_delay():
    async def main():
        async with DynamicBatcher(FakePredictor(1), max_batch_images=64, max_delay_ms=60_000) as batcher:
            batcher.flush()
            start = time.perf_counter()
            result = await batcher.submit(images(7))
            return time.perf_counter() - start, result

    seconds, result = run(main())
    assert seconds < 5 and result.labels.tolist() == [7]


def test_the_next_batch_forms_while_one_runs():
    gate = threading.Event()

    async def main():
        model = FakePredictor(1, gate=gate)
        async with DynamicBatcher(model, max_batch_images=4, max_delay_ms=1) as batcher:
            first = asyncio.ensure_future(batcher.submit(images(1)))
            await asyncio.sleep(0.05)  # batch 1 is on the model thread, blocked
            rest = [asyncio.ensure_future(batcher.submit(images(v))) for v in range(2, 8)]
            await asyncio.sleep(0.05)
            assert batcher.queued_images == 2  # waiting, not run one by one (a whole batch of 4 went ahead)
            gate.set()
            await asyncio.gather(first, *rest)
        return model

    assert run(main()).batches == [1, 4, 2]


def test_wrong_images_are_a_data_error():
    async def main():
        async with DynamicBatcher(FakePredictor(1)) as batcher:
            with pytest.raises(DataError, match=r"expected uint8 images \(n, 1, 2, 3\)"):
                await batcher.submit(np.zeros((1, 3, 3, 3), np.uint8))
            assert len(await batcher.submit(np.zeros((0, 1, 2, 3), np.uint8))) == 0

    run(main())


def test_the_batchers_own_timeout_counts_from_arrival():
    async def main():
        model = FakePredictor(1)
        async with DynamicBatcher(model, max_batch_images=8, max_delay_ms=2000, request_timeout_ms=50) as batcher:
            with pytest.raises(DeadlineExceeded, match="deadline of 50 ms"):
                await batcher.submit(images(1))
            loop = asyncio.get_running_loop()
            with pytest.raises(DeadlineExceeded, match="deadline of 10 ms"):  # arrived long ago: expires at once
                await batcher.submit(images(2), timeout_s=0.01, arrived=loop.time() - 1.0)
        return model

    assert run(main()).batches == []


def test_a_missing_optional_dependency_is_a_one_line_install_hint():
    with pytest.raises(ConfigError, match=r"needs no_such_module; install it with: pip install 'foldedcnns\[serve\]'"):
        require("no_such_module.sub")


@pytest.mark.slow
def test_importing_the_package_and_the_cli_loads_no_web_stack():
    names = "('starlette', 'uvicorn', 'httpx', 'prometheus_client', 'ray')"
    code = ("import sys, foldedcnns.serving, foldedcnns.cli.main as m; m.build_parser(); "
            f"print(sorted(k for k in {names} if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


class ThreadRecorder(FakePredictor):
    """FakePredictor that records the thread of each batch."""

    def __init__(self, fold: int, delay: float = 0.0) -> None:
        super().__init__(fold, delay)
        self.threads: list[int] = []

    def predict_batch(self, images: np.ndarray) -> Predictions:
        self.threads.append(threading.get_ident())
        return super().predict_batch(images)


def test_a_lone_batch_of_at_most_f_images_runs_on_the_event_loop_only_when_alone_says_so():
    async def main(alone, *requests):
        model = ThreadRecorder(4)
        async with DynamicBatcher(model, max_batch_images=8) as batcher:
            batcher.alone = alone
            results = [await batcher.submit(images(*r)) for r in requests]
        return model.threads, threading.get_ident(), results

    threads, loop, results = run(main(lambda: True, (1,), (2, 3, 4, 5)))
    assert threads == [loop, loop]  # 1 and 4 images (one group of f): on the loop
    assert [r.labels.tolist() for r in results] == [[1], [2, 3, 4, 5]]
    threads, loop, results = run(main(lambda: True, (1, 2, 3, 4, 5)))  # more than f images: a model thread
    assert threads[0] != loop and results[0].labels.tolist() == [1, 2, 3, 4, 5]
    for alone in (None, lambda: False):  # unset (the default) or someone else on the way: a model thread
        threads, loop, _ = run(main(alone, (1,)))
        assert threads[0] != loop


def test_a_batch_with_more_waiting_behind_it_runs_on_a_model_thread_even_when_alone_says_yes():
    async def main():
        model = ThreadRecorder(2, delay=0.05)
        async with DynamicBatcher(model, max_batch_images=2) as batcher:
            batcher.alone = lambda: True
            first = asyncio.ensure_future(batcher.submit(images(1, 2, 3)))  # its last image waits behind the batch
            await asyncio.sleep(0.01)
            rest = await asyncio.gather(batcher.submit(images(4)), batcher.submit(images(5)))
            return model, threading.get_ident(), [await first, *rest]

    model, loop, results = run(main())
    assert [r.labels.tolist() for r in results] == [[1, 2, 3], [4], [5]]
    assert model.batches == [2, 2, 1]
    assert model.threads[0] != loop and model.threads[1] != loop  # something else was queued after each cut
    assert model.threads[2] == loop  # the last one alone


def test_a_model_fault_on_the_event_loop_fails_only_its_batch():
    async def main():
        model = ThreadRecorder(2)
        async with DynamicBatcher(model, max_batch_images=4) as batcher:
            batcher.alone = lambda: True
            with pytest.raises(BatchFailed, match="poisoned input"):
                await batcher.submit(images(POISON))
            after = await batcher.submit(images(7))
        return model, threading.get_ident(), after

    model, loop, after = run(main())
    assert model.threads == [loop, loop] and after.labels.tolist() == [7]
