"""The WebSocket ``/v1/stream``: in process (a session over a fake channel: the window, the drain) and end to end
(a real `foldedcnns serve` on loopback: 8 streams in order with the Predictor's labels, bad messages, abrupt
disconnects, a client that sends 1000 frames without reading, SIGTERM while streaming).

The end-to-end checks use test_serving_http's *separable* f = 4 checkpoint, whose answer for an image does not
depend on the images folded with it, so frames of different streams (and POSTs) can share groups and still
be checked exactly against the offline Predictor.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serve_process
from PIL import Image
from serve_process import Server, npy_bytes

from foldedcnns.inference import Predictions, Predictor
from foldedcnns.serving import DynamicBatcher, Service
from foldedcnns.serving.errors import Reply
from foldedcnns.serving.stream import CLOSE_GOING_AWAY, StreamSession
from test_serving_http import separable_checkpoint

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
client = pytest.importorskip("websockets.asyncio.client")
websockets_exceptions = pytest.importorskip("websockets.exceptions")

WINDOW = 8
SHAPE = (22, 52, 3)  # lol/goldnumber-fraction's input


# -- in process: a session over a fake channel ---------------------------------------------------------------


class GatedModel:
    """A 'model' of fold 2 on 1 x 2 images whose label is the first pixel; it waits for ``gate`` before each batch."""

    fold, class_names, input_hw = 2, tuple(str(i) for i in range(256)), (1, 2)

    def __init__(self) -> None:
        self.gate = threading.Event()

    def predict_batch(self, images: np.ndarray) -> Predictions:
        self.gate.wait(10)
        labels = images[:, 0, 0, 0].astype(np.int64)
        return Predictions(labels, np.ones(len(labels), np.float32), np.zeros((len(labels), 256), np.float32),
                           self.class_names)


class FakeChannel:
    """A client that has sent ``messages`` at once and stays connected until ``leave`` is set."""

    def __init__(self, messages: list[bytes | str]) -> None:
        self.messages = deque(messages)
        self.read = 0
        self.answers: list[dict] = []
        self.closed: int | None = None
        self.denied: Reply | None = None
        self.leave = asyncio.Event()

    async def accept(self) -> None:
        pass

    async def deny(self, reply: Reply) -> None:
        self.denied = reply

    async def receive(self) -> bytes | str | None:
        if self.messages:
            self.read += 1
            return self.messages.popleft()
        await self.leave.wait()
        return None

    async def send(self, text: str) -> None:
        self.answers.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = code


def pixel(value: int) -> bytes:
    image = np.zeros((1, 2, 3), np.uint8)
    image[0, 0, 0] = value
    return npy_bytes(image)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def in_process(scenario) -> None:
    from foldedcnns.serving.metrics import ServingMetrics

    async def main() -> None:
        model = GatedModel()
        async with DynamicBatcher(model, max_batch_images=64) as batcher:
            service = Service(model, batcher, ServingMetrics())  # type: ignore[arg-type]
            try:
                await scenario(service, model)
            finally:
                model.gate.set()
                service.decoder.shutdown(wait=False)

    asyncio.run(asyncio.wait_for(main(), 30))


def gauge(service: Service, name: str) -> float:
    return service.metrics.registry.get_sample_value(f"foldedcnns_{name}") or 0.0


def test_a_client_that_sends_1000_frames_has_only_its_window_read_until_answers_go_out():
    async def scenario(service: Service, model: GatedModel) -> None:
        channel = FakeChannel([pixel(i % 200) for i in range(1000)])
        session = StreamSession(service, channel, window=WINDOW)
        task = asyncio.ensure_future(session.run({}, {}))
        await until(lambda: session.inflight == WINDOW)
        await asyncio.sleep(0.2)  # the model is stuck: nothing more may be read
        assert channel.read == WINDOW and session.inflight == WINDOW
        assert gauge(service, "stream_inflight_frames") == WINDOW and gauge(service, "open_streams") == 1
        model.gate.set()
        await until(lambda: len(channel.answers) == 1000)
        assert [a["frame"] for a in channel.answers] == list(range(1000))
        assert [a["label"] for a in channel.answers] == [i % 200 for i in range(1000)]
        assert session.peak == WINDOW and gauge(service, "stream_window_full_total") > 0
        channel.leave.set()
        await task
        assert service.streams == 0 and gauge(service, "stream_inflight_frames") == 0
        assert channel.closed is None  # the client left: nothing to close

    in_process(scenario)


def test_bad_messages_get_one_error_each_and_the_stream_goes_on():
    async def scenario(service: Service, model: GatedModel) -> None:
        model.gate.set()
        two = npy_bytes(np.zeros((2, 1, 2, 3), np.uint8))
        channel = FakeChannel([b"not an image", "a text message", two, npy_bytes(np.zeros((1, 2, 3))), pixel(7)])
        session = StreamSession(service, channel, window=2)
        task = asyncio.ensure_future(session.run({}, {}))
        await until(lambda: len(channel.answers) == 5)
        channel.leave.set()
        await task
        errors = channel.answers[:4]
        assert [a["frame"] for a in channel.answers] == [0, 1, 2, 3, 4]
        assert [a["status"] for a in errors] == [400] * 4
        assert "cannot decode the image" in errors[0]["error"] and "binary message" in errors[1]["error"]
        assert "holds 2 images" in errors[2]["error"] and "must be uint8" in errors[3]["error"]
        assert channel.answers[4] == {"frame": 4, "label": 7, "class_name": "7", "score": 1.0}

    in_process(scenario)


def test_a_drain_answers_what_was_read_closes_with_1001_and_refuses_new_streams():
    async def scenario(service: Service, model: GatedModel) -> None:
        channel = FakeChannel([pixel(i) for i in range(20)])
        session = StreamSession(service, channel, window=WINDOW)
        task = asyncio.ensure_future(session.run({}, {}))
        await until(lambda: session.inflight == WINDOW)
        service.begin_drain()
        await asyncio.sleep(0.05)
        assert not service.drained  # 8 frames still on the (stuck) model
        model.gate.set()
        await asyncio.wait_for(task, 10)
        assert [a["label"] for a in channel.answers] == list(range(WINDOW)) and channel.read == WINDOW
        assert channel.closed == CLOSE_GOING_AWAY and service.drained
        late = FakeChannel([pixel(1)])
        await StreamSession(service, late).run({}, {})
        assert late.denied is not None and late.denied.status == 503 and late.read == 0

    in_process(scenario)


def test_a_bad_crop_or_deadline_header_is_refused_before_the_upgrade():
    async def scenario(service: Service, model: GatedModel) -> None:
        for headers, query in (({}, {"crop": "nonsense"}), ({"x-request-timeout-ms": "-1"}, {})):
            channel = FakeChannel([pixel(1)])
            await StreamSession(service, channel).run(headers, query)
            assert channel.denied is not None and channel.denied.status == 400 and channel.read == 0

    in_process(scenario)


# -- end to end: a real server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def separable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return separable_checkpoint(tmp_path_factory.mktemp("stream") / "separable-f4.pt")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, SHAPE, dtype=np.uint8) for _ in range(40)]


@pytest.fixture(scope="module")
def offline(separable: Path, frames: list[np.ndarray]) -> Predictions:
    return Predictor(separable).predict(frames)


@pytest.fixture(scope="module")
def server(separable: Path) -> Iterator[Server]:
    """--header-timeout-s 1: a stream outlives the HTTP head timer; --max-body-mb 0.05: a 1009 is cheap to test."""
    with serve_process.serving(separable, "--stream-window", str(WINDOW), "--header-timeout-s", "1",
                               "--max-body-mb", "0.05", fail=pytest.fail) as running:
        yield running


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def ws_url(server: Server) -> str:
    return f"ws://{server.host}:{server.port}/v1/stream"


async def stream(url: str, messages: list[bytes | str], **kw) -> list[dict]:
    """Send ``messages`` while reading the answers; one answer per message."""
    async with client.connect(url, compression=None, **kw) as ws:
        async def send() -> None:
            for message in messages:
                await ws.send(message)

        sender = asyncio.ensure_future(send())
        answers = [json.loads(await ws.recv()) for _ in messages]
        await sender
    return answers


def metric(server: Server, name: str) -> float:
    return server.metric(f"foldedcnns_{name}")


@pytest.mark.slow
def test_8_streams_get_one_answer_per_frame_in_order_with_the_predictors_labels(server, frames, offline):
    bodies = [npy_bytes(f) if i % 2 else png(f) for i, f in enumerate(frames)]  # PNG and .npy frames
    orders = [[(c * 5 + k) % len(frames) for k in range(len(frames))] for c in range(8)]
    batches_before = metric(server, "compute_seconds_count")

    async def streams() -> list[list[dict]]:
        return await asyncio.gather(*(stream(ws_url(server), [bodies[i] for i in order]) for order in orders))

    answers = asyncio.run(streams())
    for order, got in zip(orders, answers, strict=True):
        assert [a["frame"] for a in got] == list(range(len(order)))
        assert [a["label"] for a in got] == offline.labels[order].tolist()
        assert [a["class_name"] for a in got] == [offline.names[i] for i in order]
        np.testing.assert_allclose([a["score"] for a in got], offline.scores[order], atol=1e-5)
    post = httpx.post(f"{server.url}/v1/predict", content=npy_bytes(np.stack(frames[:12])),  # under 0.05 MB
                      headers={"content-type": "application/x-npy"}, timeout=30).json()["predictions"]
    assert [p["label"] for p in post] == [a["label"] for a in answers[0][:12]]  # stream 0 sent the frames in order
    frames_sent = sum(map(len, orders))
    assert metric(server, 'stream_frames_total{status="200"}') >= frames_sent
    assert metric(server, "compute_seconds_count") - batches_before < frames_sent  # streams shared batches
    assert metric(server, "stream_inflight_frames") == 0


@pytest.mark.slow
def test_bad_messages_get_an_error_each_and_the_stream_stays_usable(server, frames, offline):
    messages = [b"not an image", "text", npy_bytes(np.stack(frames[:2])), npy_bytes(frames[0].astype(np.float32)),
                npy_bytes(frames[3])]

    async def scenario() -> tuple[list[dict], dict, int | None]:
        async with client.connect(ws_url(server), compression=None) as ws:
            answers = []
            for message in messages:
                await ws.send(message)
                answers.append(json.loads(await ws.recv()))
            await asyncio.sleep(1.2)  # past --header-timeout-s 1: a stream is not an HTTP head
            await ws.send(npy_bytes(frames[4]))
            later = json.loads(await ws.recv())
        async with client.connect(ws_url(server), compression=None) as ws:
            await ws.send(b"\0" * 60_000)  # over --max-body-mb 0.05
            with pytest.raises(websockets_exceptions.ConnectionClosed) as closed:
                await ws.recv()
        return answers, later, closed.value.rcvd.code if closed.value.rcvd else None

    answers, later, code = asyncio.run(scenario())
    assert [a["status"] for a in answers[:4]] == [400] * 4
    assert all("\n" not in a["error"] for a in answers[:4])
    assert answers[4]["label"] == offline.labels[3]
    assert (later["frame"], later["label"]) == (5, offline.labels[4])
    assert code == 1009  # message too big: the one bad message that ends the stream
    assert asyncio.run(stream(ws_url(server), [npy_bytes(frames[5])]))[0]["label"] == offline.labels[5]


@pytest.mark.slow
def test_an_abrupt_disconnect_leaves_the_server_healthy(server, frames, offline):
    async def scenario() -> None:
        ws = await client.connect(ws_url(server), compression=None)
        for f in frames:
            await ws.send(npy_bytes(f))
        await ws.recv()
        ws.transport.abort()  # no close frame: a client that died

    asyncio.run(scenario())
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    answers = asyncio.run(stream(ws_url(server), [npy_bytes(f) for f in frames[:6]]))
    assert [a["label"] for a in answers] == offline.labels[:6].tolist()
    response = httpx.post(f"{server.url}/v1/predict", content=png(frames[0]), headers={"content-type": "image/png"})
    assert response.json()["predictions"][0]["label"] == offline.labels[0]
    for _ in range(100):
        if metric(server, "open_streams") == 0 and metric(server, "stream_inflight_frames") == 0:
            break
        time.sleep(0.05)
    assert metric(server, "open_streams") == 0 and metric(server, "stream_inflight_frames") == 0
    assert "Traceback" not in server.output() and "Exception" not in server.output()


@pytest.mark.slow
def test_1000_frames_sent_without_reading_are_read_a_window_at_a_time(server, frames, offline):
    order = [i % len(frames) for i in range(1000)]
    bodies = [npy_bytes(f) for f in frames]
    full_before = metric(server, "stream_window_full_total")

    async def scenario() -> tuple[list[dict], float]:
        peak = 0.0
        # max_queue: the client library takes the answers off the socket; this test's code reads none until the end
        async with client.connect(ws_url(server), compression=None, max_queue=2048) as ws, \
                httpx.AsyncClient() as http:
            async def send_all() -> None:
                for i in order:
                    await ws.send(bodies[i])

            sender = asyncio.ensure_future(send_all())
            while not sender.done():  # sample the server's in-flight frames while the client only sends
                text = (await http.get(f"{server.url}/metrics")).text
                peak = max(peak, float(re.search(r"^foldedcnns_stream_inflight_frames (\S+)$", text, re.M).group(1)))
            await sender
            return [json.loads(await ws.recv()) for _ in order], peak

    answers, peak = asyncio.run(scenario())
    assert [a["frame"] for a in answers] == list(range(1000))
    assert [a["label"] for a in answers] == offline.labels[order].tolist()
    assert peak <= WINDOW
    assert metric(server, "stream_window_full_total") > full_before  # the server stopped reading, then resumed


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_sigterm_while_streaming_answers_every_frame_read_closes_with_1001_and_exits_0(separable, frames, offline):
    # Nothing runs until the drain (N, Q and D large): each stream's window of 8 frames waits in the queue.
    with serve_process.serving(separable, "--stream-window", str(WINDOW), "--max-batch-images", "1024",
                               "--max-queue-images", "1024", "--max-delay-ms", "60000", fail=pytest.fail) as server:
        async def one(c: int) -> tuple[list[dict], int | None]:
            answers = []
            async with client.connect(ws_url(server), compression=None) as ws:
                for k in range(12):
                    await ws.send(npy_bytes(frames[c * 12 + k]))
                try:
                    async for text in ws:
                        answers.append(json.loads(text))
                except websockets_exceptions.ConnectionClosed:
                    pass
                return answers, ws.close_code

        async def scenario() -> tuple[list[tuple[list[dict], int | None]], list[int]]:
            streams = [asyncio.ensure_future(one(c)) for c in range(3)]
            for _ in range(400):
                if metric(server, "stream_inflight_frames") == 3 * WINDOW:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the streams' windows did not fill")
            kids = children(server.proc.pid)
            server.proc.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*streams)
            return results, kids

        results, kids = asyncio.run(scenario())
        code = server.proc.wait(timeout=30)
        output = server.output()
    for c, (answers, close_code) in enumerate(results):
        assert close_code == CLOSE_GOING_AWAY
        assert [a["frame"] for a in answers] == list(range(WINDOW))  # every frame read answered, in order
        assert [a["label"] for a in answers] == offline.labels[c * 12:c * 12 + WINDOW].tolist()
    assert code == 0, output
    assert "drained, every accepted request answered" in output and "Traceback" not in output
    assert not [pid for pid in kids if Path(f"/proc/{pid}").exists()]
