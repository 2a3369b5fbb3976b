"""In process, without a server process: the request path both servers share (decoding, routes, error answers),
the Ray replica's endpoints without Ray, and ``build_service`` on an engine other than the default."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from serve_process import npy_bytes, one_chunk

from foldedcnns.errors import ConfigError
from foldedcnns.inference import Predictor
from foldedcnns.runtime import Engine
from foldedcnns.serving import QueueFull, Service, build_service
from foldedcnns.serving.connections import ConnectionLimits
from foldedcnns.serving.errors import Reply, reply_for
from foldedcnns.serving.ray_serve import REQUEST_MARGIN_S, Replica, proxy_options, replica_engine
from foldedcnns.serving.service import ROUTES, find_route, predictions_body, predictions_json

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

TASK = "lol/goldnumber-fraction"
NPY = {"content-type": "application/x-npy"}


npy, chunks = npy_bytes, one_chunk  # benchmarks/serve_process.py: a request body and its stream


class Failing:
    """What the native service (as its batcher) and the Ray replica (as its classify step) run: raises ``exc``."""

    def __init__(self, exc: Exception) -> None:
        self.exc, self.request_timeout = exc, None
        self.fold, self.class_names, self.input_hw = 1, ("a", "b"), (2, 2)

    def check_room(self, images: int) -> None:  # admission from the headers: always room
        pass

    async def submit(self, images: np.ndarray, **_: object) -> None:
        raise self.exc

    async def close(self) -> None:
        pass


class FailingReplica(Replica):
    async def classify(self, images: np.ndarray) -> list[dict]:
        raise self.predictor.exc


def both_replies(exc: Exception, body: bytes, headers: dict[str, str]) -> tuple[Reply, Reply]:
    """The native service's and the Ray replica's reply to one request whose model step raises ``exc``."""
    from foldedcnns.serving.metrics import ServingMetrics

    fake = Failing(exc)
    service = Service(fake, fake, ServingMetrics())  # type: ignore[arg-type]
    replica = FailingReplica(fake, max_batch_images=4)  # type: ignore[arg-type]

    async def main() -> tuple[Reply, Reply]:
        try:
            return (await service.predict(headers, chunks(body), {}),
                    await replica.predict(headers, chunks(body), {}))
        finally:
            await service.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("exc", [QueueFull("queue full (8 of 8 images waiting); retry later"),
                                 ConfigError("a crop outside the image\nsecond line"),
                                 KeyError("a bug")], ids=["serving-error", "foldedcnns-error", "bug"])
def test_both_servers_answer_an_exception_with_the_same_reply(exc):
    native, ray = both_replies(exc, npy(np.zeros((3, 4, 4, 3), np.uint8)), NPY)
    assert native == ray == reply_for(exc)
    assert native.status == {QueueFull: 503, ConfigError: 400, KeyError: 500}[type(exc)]
    assert "\n" not in native.body["error"]
    assert native.headers == ({"Retry-After": "1"} if isinstance(exc, QueueFull) else {})


@pytest.mark.parametrize(("body", "headers", "status"), [
    (b"hello", {"content-type": "text/plain"}, 415),
    (b"", {"content-type": "image/png"}, 400),
    (b"not an image", {"content-type": "image/png"}, 400),
    (npy(np.zeros((2, 2, 2, 3), np.uint8)), {**NPY, "content-length": str(64 * 1024 * 1024)}, 413),
])
def test_both_servers_decode_through_the_same_path(body, headers, status):
    native, ray = both_replies(RuntimeError("not reached"), body, headers)
    assert native == ray and native.status == status


def test_a_ray_replica_cuts_a_stalled_body_with_408_and_its_proxy_gets_the_limits():
    limits = ConnectionLimits(body_timeout_s=0.2, upload_timeout_s=5, keep_alive_s=7)
    replica = FailingReplica(Failing(RuntimeError("not reached")), max_batch_images=4,  # type: ignore[arg-type]
                             limits=limits)

    async def stalled():
        yield b"\x93NUMPY"
        await asyncio.sleep(30)  # a client that stops sending
        yield b""

    async def main() -> tuple[Reply, float]:
        started = asyncio.get_running_loop().time()
        reply = await asyncio.wait_for(replica.predict(NPY, stalled(), {}), 5)
        return reply, asyncio.get_running_loop().time() - started

    reply, took = asyncio.run(main())
    assert reply.status == 408 and "--body-timeout-s" in reply.body["error"] and took < 2
    assert proxy_options("127.0.0.1", 8000, limits) == {
        "host": "127.0.0.1", "port": 8000, "keep_alive_timeout_s": 7, "request_timeout_s": 5 + REQUEST_MARGIN_S}


def test_the_replica_routes_by_the_shared_table_without_metrics():
    replica = Replica(SimpleNamespace(), max_batch_images=4)  # type: ignore[arg-type]

    def answer(method: str, path: str) -> Reply:
        return asyncio.run(replica.answer(SimpleNamespace(method=method, url=SimpleNamespace(path=path))))

    assert answer("GET", "/healthz/") == answer("GET", "/readyz") == Reply(200, {"status": "ok"})
    missing = answer("GET", "/metrics")
    assert missing.status == 404 and missing.body["error"] == (
        "GET /metrics: not found (Ray Serve path: /v1/predict, /v1/model, /healthz, /readyz)")
    assert answer("GET", "/v1/predict").status == 404
    assert find_route(ROUTES, "GET", "/metrics").endpoint == "metrics"
    assert find_route(ROUTES, "POST", "/v1/predict/").endpoint == "predict"


def test_a_replica_runs_on_its_cpu_share_unless_told_and_on_the_gpu_ray_gives_it():
    assert replica_engine(Engine(), 2.4).threads == 2
    assert replica_engine(Engine(), 0.5).threads == 1
    assert replica_engine(Engine(threads=3), 2.0).threads == 3
    assert replica_engine(Engine(device="cuda:0"), 1.0).device == "cuda:0"
    with pytest.raises(ConfigError, match="pass --device cuda, not cuda:1"):
        replica_engine(Engine(device="cuda:1"), 1.0)


def test_int8_without_calibration_images_is_refused_before_serving(tiny_checkpoint):
    with pytest.raises(ConfigError, match="--data DIR"):
        build_service(tiny_checkpoint(1, task=TASK), engine=Engine("onnxruntime", "int8"))


@pytest.mark.slow  # exports the model to ONNX
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_build_service_on_onnxruntime_serves_the_predictors_answers(tiny_checkpoint):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from foldedcnns.serving import build_app

    checkpoint = tiny_checkpoint(4, task=TASK)
    engine = Engine("onnxruntime")
    frames = np.random.default_rng(0).integers(0, 256, (8, 22, 52, 3), dtype=np.uint8)  # 2 whole groups of 4
    want = Predictor(checkpoint, engine=engine).predict(frames)
    service = build_service(checkpoint, engine=engine, max_delay_ms=1)
    with TestClient(build_app(service)) as client:
        info = client.get("/v1/model").json()
        response = client.post("/v1/predict", content=npy(frames), headers=NPY)
    assert info["backend"] == "onnxruntime" and info["precision"] == "fp32" and info["device"] == "cpu"
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    assert [g["label"] for g in got] == want.labels.tolist()
    np.testing.assert_allclose([g["score"] for g in got], want.scores, atol=1e-5)


def test_the_service_lets_its_batcher_run_on_the_event_loop_only_for_its_one_request_in_flight():
    from foldedcnns.serving import DynamicBatcher
    from foldedcnns.serving.metrics import ServingMetrics

    fake = SimpleNamespace(fold=4, class_names=("a",), input_hw=(2, 2))
    batcher = DynamicBatcher(fake)  # type: ignore[arg-type]
    assert batcher.alone is None  # on its own, a batcher never runs the model on the loop
    service = Service(fake, batcher, ServingMetrics())  # type: ignore[arg-type]
    seen = []
    for inflight, streams in ((1, 0), (2, 0), (1, 1), (0, 1)):
        service.inflight, service.streams = inflight, streams
        seen.append(batcher.alone())
    assert seen == [True, False, False, False]


def test_the_predictions_body_is_the_json_starlette_would_write():
    from starlette.responses import JSONResponse

    from foldedcnns.inference.predictor import Predictions

    names = ("plain", 'quo"te', "ünï", "back\\slash")
    rng = np.random.default_rng(3)
    scores = rng.random(9).astype(np.float32)
    preds = Predictions(rng.integers(0, 4, 9), scores, rng.random((9, 4)).astype(np.float32), names)
    assert predictions_body(preds) == JSONResponse({"predictions": predictions_json(preds)}).body
    scores[4] = np.nan  # a broken model: an error, never invalid JSON
    with pytest.raises(ValueError, match="not finite"):
        predictions_body(preds)


def test_the_in_flight_and_queue_gauges_are_read_when_metrics_are_scraped():
    from foldedcnns.serving.metrics import ServingMetrics

    metrics, state = ServingMetrics(), {"inflight": 3, "queued": 7}
    metrics.follow(lambda: state["inflight"], lambda: state["queued"])
    state.update(inflight=5, queued=0)
    text = metrics.render()[0].decode()
    assert "foldedcnns_inflight_requests 5.0" in text and "foldedcnns_queue_images 0.0" in text
