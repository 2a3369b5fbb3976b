"""A new engine is one class and one registration: bench, tune, predict and serve then all run it by name."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from foldedcnns.cli.main import main
from foldedcnns.inference import Predictor
from foldedcnns.runtime import BACKENDS, Backend, Engine, Runner, register_backend

TASK = "lol/goldnumber-fraction"


class ToyBackend(Backend):
    """The one class: eager underneath, counting the calls it runs, so a test can tell it ran."""

    name = "toy"
    description = "a test engine: eager, counting its calls"
    calls = 0

    def build(self, model, example, engine, fold):
        cast = torch.nn.Sequential(model).to(torch.device(engine.device)).eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            type(self).calls += 1
            with torch.inference_mode():
                return cast(x)

        return Runner(run, lambda x: x.to(torch.device(engine.device), torch.float32), lambda y: y)


@pytest.fixture()
def toy() -> Iterator[type[ToyBackend]]:
    register_backend(ToyBackend)  # the one registration
    ToyBackend.calls = 0
    yield ToyBackend
    del BACKENDS[ToyBackend.name]


@pytest.fixture()
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint(2, task=TASK)


def test_bench_times_the_new_engine(toy, checkpoint, tmp_path, capsys):
    out = tmp_path / "bench.csv"
    assert main(["bench", "--tasks", str(checkpoint), "--folds", "2", "--batch-sizes", "8", "--backends", "toy",
                 "--precisions", "fp32", "--trials", "1", "--seconds", "0.05", "--peak-seconds", "0", "--out",
                 str(out), "--json"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows and {row["Backend"] for row in rows} == {"toy"}
    assert json.loads(capsys.readouterr().out)["best"][0]["backend"] == "toy"
    assert toy.calls > 1


def test_tune_searches_the_new_engine(toy, checkpoint, capsys):
    assert main(["tune", str(checkpoint), "--folds", "2", "--backends", "toy", "--precisions", "fp32",
                 "--batch-sizes", "8", "--trials", "1", "--screen-seconds", "0.05", "--seconds", "0.05",
                 "--peak-seconds", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recommended"]["backend"] == "toy" and toy.calls > 1


def test_predict_runs_the_new_engine_as_eager_would(toy, checkpoint, class_folders, tmp_path, capsys):
    class_folders(tmp_path / "images", {"a": 5}, size=(22, 52))
    folder = tmp_path / "images" / "a"
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "toy.csv"), "--backend", "toy",
                 "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "toy" and toy.calls >= 1
    assert main(["predict", str(checkpoint), str(folder), "--out", str(tmp_path / "eager.csv"),
                 "--no-progress", "--json"]) == 0
    labels = [[row["label"] for row in csv.DictReader((tmp_path / f"{name}.csv").open())] for name in ("toy", "eager")]
    assert labels[0] == labels[1] and len(labels[0]) == 5


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_serve_answers_with_the_new_engine(toy, checkpoint):
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    pytest.importorskip("prometheus_client")
    from starlette.testclient import TestClient

    from foldedcnns.serving import build_app, build_service

    frames = np.random.default_rng(0).integers(0, 256, (4, 22, 52, 3), dtype=np.uint8)
    want = Predictor(checkpoint).predict(frames)
    service = build_service(str(checkpoint), engine=Engine("toy"), max_delay_ms=1)
    body = io.BytesIO()
    np.save(body, frames)
    with TestClient(build_app(service)) as client:
        info = client.get("/v1/model").json()
        response = client.post("/v1/predict", content=body.getvalue(), headers={"content-type": "application/x-npy"})
    assert info["backend"] == "toy" and response.status_code == 200, response.text
    assert [p["label"] for p in response.json()["predictions"]] == want.labels.tolist() and toy.calls >= 1
