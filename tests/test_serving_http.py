"""End to end: a real `foldedcnns serve` process on a free loopback port, spoken to over HTTP.

Correctness checks use a *separable* f = 4 checkpoint: the weights of a random f = 1 lol/goldnumber-fraction
CNN copied block-diagonally into an f = 4 model with 4x the widths, so image j of a group only sees its
own channels. Its answer for an image is then the same whatever images share its group, so every
served score can be checked exactly against the offline Predictor, while the server folds images of
different requests together as it does for any model.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serve_process
import torch
from serve_process import Server

from foldedcnns.data.imageio import read_image
from foldedcnns.inference import Predictor
from foldedcnns.inference.pipeline import RunOptions, run_predict
from foldedcnns.models import build_model
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.training.evaluation import evaluate

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

TASK = "lol/goldnumber-fraction"


def serving(checkpoint: Path, *args: str, timeout: float = 90.0) -> contextlib.AbstractContextManager[Server]:
    """``foldedcnns serve CKPT --port 0 --threads 1 ARGS`` for the block (benchmarks/serve_process.py); killed after."""
    return serve_process.serving(checkpoint, *args, timeout=timeout, fail=pytest.fail)


def separable_checkpoint(path: Path, fold: int = 4, seed: int = 0) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = build_model(TASK, fold=1).state_dict()
        model = build_model(TASK, fold=fold, multiplier=fold)
    state = {}
    for name, wide in model.state_dict().items():
        narrow = base[name]
        if wide.dim() == 1:
            state[name] = narrow.repeat(fold)
        else:
            block = torch.zeros_like(wide)
            out_c, in_c = narrow.shape[:2]
            for j in range(fold):
                block[j * out_c:(j + 1) * out_c, j * in_c:(j + 1) * in_c] = narrow
            state[name] = block
    model.load_state_dict(state)
    return save_checkpoint(path, make_checkpoint(model))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def synth(work: Path) -> Path:
    """`foldedcnns data synth lol/goldnumber-fraction DIR --per-class 20`: 33 test images."""
    out = work / "synth"
    subprocess.run([sys.executable, "-m", "foldedcnns.cli.main", "data", "synth", TASK, str(out), "--per-class", "20",
                    "--workers", "1", "--no-progress"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def labelled_images(synth: Path) -> tuple[list[Path], list[int]]:
    paths = sorted((synth / "test").glob("*/*.png"))
    classes = sorted(p.name for p in (synth / "test").iterdir())
    return paths, [classes.index(p.parent.name) for p in paths]


@pytest.fixture(scope="module")
def separable(work: Path) -> Path:
    return separable_checkpoint(work / "separable-f4.pt")


@pytest.fixture(scope="module")
def shared_server(separable: Path) -> Iterator[Server]:
    with serving(separable, "--max-delay-ms", "20", "--max-body-mb", "0.05") as server:
        yield server


def post(url: str, body: bytes, kind: str, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/predict", content=body, headers={"content-type": kind, **kw.pop("headers", {})},
                      timeout=30, **kw)


def npy(images: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, images)
    return buffer.getvalue()


@pytest.mark.slow
def test_the_separable_checkpoint_ignores_its_group(separable, tiny_checkpoint, labelled_images):
    frames = [read_image(p) for p in labelled_images[0][:9]]
    folded, original = Predictor(separable), Predictor(tiny_checkpoint(1, task=TASK))
    np.testing.assert_allclose(folded.predict(frames).scores, original.predict(frames).scores, atol=1e-5)
    np.testing.assert_allclose(folded.predict(frames[::-1]).scores[::-1], folded.predict(frames).scores, atol=1e-5)


@pytest.mark.slow
def test_32_concurrent_clients_each_get_their_own_answers(shared_server, separable, synth, labelled_images, work):
    paths, truth = labelled_images
    order = [i for _ in range(2) for i in range(len(paths))]  # every test image twice: 66 requests
    bodies = [p.read_bytes() for p in paths]

    async def clients() -> list[dict]:
        answers: dict[int, dict] = {}
        jobs: asyncio.Queue = asyncio.Queue()
        for n, i in enumerate(order):
            jobs.put_nowait((n, i))
        async with httpx.AsyncClient(timeout=30) as client:
            async def one_client() -> None:
                while not jobs.empty():
                    n, i = jobs.get_nowait()
                    r = await client.post(f"{shared_server.url}/v1/predict", content=bodies[i],
                                          headers={"content-type": "image/png"})
                    assert r.status_code == 200, r.text
                    answers[n] = r.json()

            await asyncio.gather(*(one_client() for _ in range(32)))
        return [answers[n] for n in range(len(order))]

    answers = asyncio.run(clients())
    offline = Predictor(separable).predict([read_image(p) for p in paths])
    for n, i in enumerate(order):
        (got,) = answers[n]["predictions"]
        assert got["label"] == offline.labels[i] and got["class_name"] == offline.names[i]
        assert abs(got["score"] - float(offline.scores[i])) < 1e-5
    served = np.array([answers[n]["predictions"][0]["label"] for n in range(len(paths))])
    top1 = 100 * float(np.mean(served == np.array(truth)))
    assert abs(top1 - evaluate(separable, synth, "test")["top1"]) <= 0.5
    run_predict(separable, [str(synth / "test")], work / "predict.csv", run=RunOptions(task_check=False))
    with open(work / "predict.csv", newline="") as handle:
        rows = {Path(r["path"]).name + Path(r["path"]).parent.name: int(r["label"]) for r in csv.DictReader(handle)}
    predicted = np.array([rows[p.name + p.parent.name] for p in paths])
    assert float(np.mean(predicted == served)) >= 0.99
    metrics = httpx.get(f"{shared_server.url}/metrics").text
    batches = float(re.search(r"^foldedcnns_compute_seconds_count (\S+)$", metrics, re.M).group(1))
    assert batches < len(order)  # requests of different clients shared batches


@pytest.mark.slow  # starts a real server process
def test_model_health_ready_and_metrics(shared_server):
    info = httpx.get(f"{shared_server.url}/v1/model").json()
    assert info["task"] == TASK and info["fold"] == 4 and len(info["classes"]) == 11
    assert info["input_size"] == {"height": 22, "width": 52, "channels": 3} and info["backend"] == "eager"
    assert info["batcher"]["max_batch_images"] == 64 and info["batcher"]["isolate_requests"] is False
    assert httpx.get(f"{shared_server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{shared_server.url}/readyz").status_code == 200
    metrics = httpx.get(f"{shared_server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("requests_total", "images_total", "request_seconds_bucket", "queue_seconds_bucket",
                 "compute_seconds_bucket", "batch_images_bucket", "batch_padded_slots_bucket", "queue_images"):
        assert f"foldedcnns_{name}" in metrics.text


@pytest.mark.slow
def test_multipart_and_npy_requests_answer_in_order(shared_server, separable, labelled_images):
    paths = labelled_images[0][:6]
    frames = [read_image(p) for p in paths]
    offline = Predictor(separable).predict(frames)
    files = [(f"image{i}", (p.name, p.read_bytes(), "image/png")) for i, p in enumerate(paths)]
    multipart = httpx.post(f"{shared_server.url}/v1/predict", files=files, timeout=30)
    array = post(shared_server.url, npy(np.stack(frames)), "application/x-npy")
    for response in (multipart, array):
        assert response.status_code == 200, response.text
        got = response.json()["predictions"]
        assert [g["label"] for g in got] == offline.labels.tolist()
        np.testing.assert_allclose([g["score"] for g in got], offline.scores, atol=1e-5)
    cropped = httpx.post(f"{shared_server.url}/v1/predict?crop=0,0,26,11", files=files[:2], timeout=30)
    want = Predictor(separable).predict(frames[:2], crop="0,0,26,11")
    assert [g["label"] for g in cropped.json()["predictions"]] == want.labels.tolist()


@pytest.mark.parametrize(("body", "kind", "status", "message"), [
    (b"not an image", "image/png", 400, "cannot decode the image"),
    (b"\x93NUMPY garbage", "application/x-npy", 400, "cannot read the .npy body"),
    (None, "application/x-npy", 400, "must be uint8"),
    (b"", "image/png", 400, "empty body"),
    (b"x" * 60_000, "image/png", 413, "exceeds the limit"),
    (b"hello", "text/plain", 415, "unsupported media type 'text/plain'"),
    (b"hello", "", 415, "unsupported media type"),
])
def test_bad_inputs_get_their_status_and_a_one_line_error(shared_server, body, kind, status, message):
    body = npy(np.zeros((2, 5, 5), np.float32)) if body is None else body
    response = post(shared_server.url, body, kind)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error and "\n" not in error and response.json()["status"] == status


@pytest.mark.slow  # starts a real server process
def test_bad_crop_and_unknown_routes_are_one_line_json(shared_server, labelled_images):
    png = labelled_images[0][0].read_bytes()
    for url, status in ((f"{shared_server.url}/v1/predict?crop=1,2", 400),
                        (f"{shared_server.url}/v1/predict?crop=40,0,30,30", 400)):
        response = httpx.post(url, content=png, headers={"content-type": "image/png"})
        assert response.status_code == status and "crop" in response.json()["error"]
    assert httpx.get(f"{shared_server.url}/nowhere").json()["status"] == 404
    assert httpx.get(f"{shared_server.url}/v1/predict").status_code == 405


@pytest.mark.slow
def test_loadtest_reports_levels(shared_server, synth):
    out = subprocess.run([sys.executable, "-m", "foldedcnns.cli.main", "loadtest", shared_server.url, "--images",
                          str(synth / "test"), "--concurrency", "1,4", "--seconds", "0.5", "--warmup", "0.2",
                          "--images-per-request", "3", "--json"], check=True, capture_output=True, text=True)
    levels = json.loads(out.stdout)
    assert [lv["concurrency"] for lv in levels] == [1, 4]
    for level in levels:
        assert set(level["statuses"]) == {"200"} and level["images_per_s"] > 0 and level["p50_ms"] > 0
        assert level["images"] == 3 * level["statuses"]["200"] and "compute_ms_per_batch" in level["server"]


@pytest.mark.slow
def test_isolated_requests_get_exactly_the_predictor_scores(tiny_checkpoint, labelled_images):
    checkpoint = tiny_checkpoint(4, task=TASK)  # random weights: the answers depend strongly on the group
    frames = [read_image(p) for p in labelled_images[0][:12]]
    requests = [frames[0:4], frames[4:8], frames[8:11], frames[11:12]]
    offline = [Predictor(checkpoint).predict(r) for r in requests]
    with serving(checkpoint, "--isolate-requests", "--max-delay-ms", "200") as server:
        async def send() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*(client.post(f"{server.url}/v1/predict", content=npy(np.stack(r)),
                                                          headers={"content-type": "application/x-npy"})
                                              for r in requests))

        responses = asyncio.run(send())
        metrics = httpx.get(f"{server.url}/metrics").text
    for response, want in zip(responses, offline, strict=True):
        got = response.json()["predictions"]
        assert [g["label"] for g in got] == want.labels.tolist()
        np.testing.assert_allclose([g["score"] for g in got], want.scores, atol=1e-5)
    assert "foldedcnns_batch_requests_sum 4.0" in metrics  # the four requests shared one batch


@pytest.mark.slow
def test_a_burst_past_the_queue_gets_503_at_once_and_a_late_deadline_504(separable, labelled_images):
    paths = labelled_images[0]
    offline = Predictor(separable).predict([read_image(p) for p in paths])
    with serving(separable, "--max-queue-images", "8", "--max-delay-ms", "1500") as server:
        async def burst() -> tuple[list, list[int]]:
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
                async def one(i: int) -> tuple[int, httpx.Response, float]:
                    start = time.perf_counter()
                    r = await client.post(f"{server.url}/v1/predict", content=paths[i].read_bytes(),
                                          headers={"content-type": "image/png"})
                    return i, r, time.perf_counter() - start

                async def health() -> list[int]:
                    codes = []
                    for _ in range(5):
                        codes.append((await client.get(f"{server.url}/healthz")).status_code)
                        await asyncio.sleep(0.05)
                    return codes

                results, codes = await asyncio.gather(asyncio.gather(*(one(i % len(paths)) for i in range(40))),
                                                      health())
                return results, codes

        results, health_codes = asyncio.run(burst())
        late = post(server.url, paths[0].read_bytes(), "image/png", headers={"X-Request-Timeout-Ms": "50"})
    statuses = [r.status_code for _, r, _ in results]
    assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
    assert health_codes == [200] * 5
    first_answer = min(seconds for _, r, seconds in results if r.status_code == 200)
    for i, response, seconds in results:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1" and "queue full" in response.json()["error"]
            assert seconds < min(first_answer, 1.0)  # refused at once, not after the 1.5 s batch delay
        else:
            assert response.json()["predictions"][0]["label"] == offline.labels[i]
    assert late.status_code == 504 and "deadline of 50 ms" in late.json()["error"]


@pytest.mark.slow
def test_sigterm_with_100_requests_in_flight_answers_all_and_exits_0(tiny_checkpoint, labelled_images):
    checkpoint = tiny_checkpoint(4, task=TASK)
    frames = np.stack([read_image(p) for p in labelled_images[0]])
    batch = frames[:8]
    want = Predictor(checkpoint).predict(batch).labels.tolist()  # 8 = 2 whole groups: the same groups served
    body = npy(batch)
    # Nothing runs until the drain: N and D are large, so all 100 requests (800 images) are queued.
    with serving(checkpoint, "--max-batch-images", "1024", "--max-queue-images", "1024", "--max-delay-ms",
                 "60000") as server:
        async def scenario() -> tuple[list[httpx.Response], list[int], int]:
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=128)) as client:
                flying = [asyncio.ensure_future(client.post(f"{server.url}/v1/predict", content=body,
                                                            headers={"content-type": "application/x-npy"}))
                          for _ in range(100)]
                for _ in range(400):
                    ready = (await client.get(f"{server.url}/readyz")).json()
                    if ready["inflight"] == 100 and ready["queue_images"] == 800:
                        break
                    await asyncio.sleep(0.05)
                else:
                    pytest.fail(f"the 100 requests were not all accepted: {ready}")
                server.proc.send_signal(signal.SIGTERM)
                ready_codes, refused = [], 0
                for _ in range(200):
                    try:
                        code = (await client.get(f"{server.url}/readyz")).status_code
                    except httpx.HTTPError:  # already drained and gone
                        break
                    ready_codes.append(code)
                    if code == 503:
                        r = await client.post(f"{server.url}/v1/predict", content=npy(batch[:1]),
                                              headers={"content-type": "application/x-npy"})
                        refused = r.status_code
                        break
                    await asyncio.sleep(0.01)
                return await asyncio.gather(*flying), ready_codes, refused

        responses, ready_codes, refused = asyncio.run(scenario())
        code = server.proc.wait(timeout=60)
        output = server.output()
    assert [r.status_code for r in responses] == [200] * 100
    assert all([p["label"] for p in r.json()["predictions"]] == want for r in responses)
    assert ready_codes[-1] == 503 and refused == 503
    assert code == 0, output
    assert "drained, every accepted request answered" in output
