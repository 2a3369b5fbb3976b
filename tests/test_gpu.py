"""CUDA paths that should succeed on a GPU machine (skipped without one).

Run them with ``pytest -q -m gpu tests/test_gpu.py`` (``benchmarks/gpu_check.py`` does, on the GPU
machine). They cover: CUDA-graph capture and replay against eager (fp32, and fp16 with a looser
tolerance), including calls with fewer and more images than the graph was captured for;
reduced-precision agreement of eager, channels-last and compile with fp32; ONNX Runtime without a CUDA
provider giving a clean ``BackendUnavailable``; ``Predictor`` on CUDA giving CPU's labels; and the
``train --device cuda --amp``, ``bench --device cuda`` and ``peak --device cuda`` commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from foldedcnns import build_model
from foldedcnns.cli.main import main
from foldedcnns.errors import ConfigError
from foldedcnns.inference import Predictor
from foldedcnns.runtime import BackendUnavailable, Engine, get_backend
from foldedcnns.runtime.checkpoint import make_checkpoint

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[1]
GAME_TASK = "lol/goldnumber-fraction"  # 22 x 52 RGB, 11 classes
NOSCOPE_TASK = "noscope/coral"
# Largest |cuda-graphs - eager| allowed, relative to max(1, largest |logit|): fp32 allows TF32 convolutions
# (on by default in cuDNN) and a different (channels-last) kernel choice; fp16 rounds every layer. A wrong
# input, a stale graph or bad padding shows as errors of the size of the logits themselves (0.1 and more).
GRAPH_TOLERANCE = {"fp32": 5e-3, "fp16": 2e-2}
MIN_AGREEMENT = 0.95  # share of random inputs whose reduced-precision argmax is fp32's
CLI_TIMEOUT_S = 600


def seeded_model(task: str, fold: int, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(task, fold=fold).eval()


def random_images(model: torch.nn.Module, n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, *model.config.image_size, generator=torch.Generator().manual_seed(seed))


def example(model: torch.nn.Module, groups: int) -> torch.Tensor:
    return torch.rand(groups, *model.config.input_shape, generator=torch.Generator().manual_seed(0))


def max_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to max(1, largest |reference logit|)."""
    return float((out.float().cpu() - ref.float().cpu()).abs().max()) / max(1.0, float(ref.abs().max()))


def cli_env() -> dict[str, str]:
    """The package importable from src/ without an install (as on the bare GPU machine)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def cli(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foldedcnns.cli.main", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=timeout, check=False)


@pytest.fixture
def no_tf32() -> Iterator[None]:
    """Plain fp32 on the GPU, so CUDA and CPU results can be compared closely."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize(("task", "fold"), [(GAME_TASK, 1), (GAME_TASK, 3), (NOSCOPE_TASK, 2)])
def test_cuda_graphs_replay_matches_eager(task: str, fold: int, precision: str) -> None:
    model = seeded_model(task, fold)
    groups = 8  # the graph is captured for 8 folded inputs = 8 * fold images
    graphs = get_backend("cuda-graphs").prepare(model, example(model, groups), Engine("cuda-graphs", precision, "cuda"))
    eager = get_backend("eager").prepare(model, example(model, 2), Engine("eager", precision, "cuda"))
    assert graphs.static_inputs == groups and graphs.fold == fold
    tolerance = GRAPH_TOLERANCE[precision]
    # exactly the captured size, fewer images (a partial last group and a padded graph call), and more (two calls)
    for n in (groups * fold, groups * fold - 1 if fold > 1 else groups - 3, 1, 2 * groups * fold + 1):
        images = random_images(model, n, seed=n)
        out, ref = graphs.classify(images), eager.classify(images)
        assert out.shape == ref.shape == (n, model.config.task.num_classes)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert max_error(out, ref) <= tolerance, f"{n} images: cuda-graphs differs from eager"
    # replaying again gives the same numbers, also after a call of another size in between
    images = random_images(model, groups * fold, seed=7)
    first = graphs.classify(images)
    graphs.classify(random_images(model, 3, seed=8))
    assert max_error(graphs.classify(images), first) <= 1e-6


def test_cuda_graphs_matches_fp32_reference_on_cpu(no_tf32: None) -> None:
    model = seeded_model(GAME_TASK, 2)
    images = random_images(model, 37)
    graphs = Engine("cuda-graphs", "fp32", "cuda").prepare(model, 16)
    cpu = Engine("eager", "fp32", "cpu").prepare(model, 16)
    assert max_error(graphs.classify(images), cpu.classify(images)) <= 1e-4


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["eager", "channels-last", "compile"])
def test_reduced_precision_agrees_with_fp32(backend: str, precision: str) -> None:
    model = seeded_model(GAME_TASK, 2)
    images = random_images(model, 512)
    reference = Engine("eager", "fp32", "cuda").prepare(model, 64)
    reduced = Engine(backend, precision, "cuda").prepare(model, 64)
    expected, out = reference.classify(images), reduced.classify(images)
    assert out.shape == expected.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    agreement = float((out.argmax(1) == expected.argmax(1)).float().mean())
    assert agreement >= MIN_AGREEMENT, f"{backend} {precision}: argmax agrees with fp32 on {agreement:.1%}"


def test_onnxruntime_on_cuda_is_a_clean_skip_or_runs() -> None:
    model = seeded_model(GAME_TASK, 2)
    backend = get_backend("onnxruntime")
    ok, reason = backend.is_available("cuda", "fp32")
    if ok:  # an onnxruntime-gpu build: then it must run and agree with eager
        prepared = backend.prepare(model, example(model, 4), Engine("onnxruntime", "fp32", "cuda"))
        images = random_images(model, 8)
        eager = Engine(device="cuda").prepare(model, 8)
        assert max_error(prepared.classify(images), eager.classify(images)) <= GRAPH_TOLERANCE["fp32"]
        return
    assert reason and "\n" not in reason
    with pytest.raises(BackendUnavailable) as info:
        backend.prepare(model, example(model, 4), Engine("onnxruntime", "fp32", "cuda"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="onnxruntime cannot run fp32 on cuda"):
        Engine("onnxruntime", device="cuda").prepare(model, 4)


def test_bench_on_cuda_skips_onnxruntime_with_a_notice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.csv"
    assert main(["bench", "--tasks", GAME_TASK, "--folds", "1,2", "--batch-sizes", "64", "--backends",
                 "eager,cuda-graphs,onnxruntime", "--precisions", "fp16", "--device", "cuda", "--iterations", "5",
                 "--trials", "1", "--peak-seconds", "0", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    backends = {r["backend"] for r in report["records"]}
    assert {"eager", "cuda-graphs"} <= backends
    if not get_backend("onnxruntime").is_available("cuda", "fp16")[0]:
        assert "onnxruntime" not in backends
        assert any("onnxruntime" in n for n in report["notices"])
    assert all(r["throughput"] > 0 and r["device"].startswith("cuda") for r in report["records"])


@pytest.mark.parametrize(("backend", "precision"), [("eager", "fp32"), ("cuda-graphs", "fp32")])
def test_predictor_on_cuda_gives_cpus_labels(backend: str, precision: str, no_tf32: None) -> None:
    ckpt = make_checkpoint(seeded_model(GAME_TASK, 4))
    frames = np.random.default_rng(0).integers(0, 256, (203, 40, 90, 3), dtype=np.uint8)  # resized to 22 x 52
    cpu = Predictor(ckpt, batch_size=64).predict(frames)
    gpu = Predictor(ckpt, engine=Engine(backend, precision, "cuda"), batch_size=64).predict(frames)
    assert len(gpu) == len(cpu) == 203
    assert gpu.labels.tolist() == cpu.labels.tolist()
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-4)


def test_predictor_fp16_cuda_graphs_mostly_agrees_with_cpu() -> None:
    ckpt = make_checkpoint(seeded_model(GAME_TASK, 2))
    frames = np.random.default_rng(1).integers(0, 256, (301, 22, 52, 3), dtype=np.uint8)
    cpu = Predictor(ckpt).predict(frames)
    gpu = Predictor(ckpt, engine=Engine("cuda-graphs", "fp16", "cuda")).predict(frames)
    assert len(gpu) == 301
    assert float(np.mean(gpu.labels == cpu.labels)) >= MIN_AGREEMENT


def test_train_one_epoch_with_amp_on_cuda(tmp_path: Path) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    made = cli("data", "synth", GAME_TASK, str(data), "--per-class", "20", "--no-progress", "--json")
    assert made.returncode == 0, made.stderr
    trained = cli("train", GAME_TASK, "--data", str(data), "--fold", "2", "--out", str(run), "--epochs", "1",
                  "--batch-size", "32", "--no-curriculum", "--device", "cuda", "--amp", "--no-progress", "--json")
    assert trained.returncode == 0, trained.stderr
    report = json.loads(trained.stdout)
    assert report["epochs"] == 1 and report["fold"] == 2
    assert (run / "best.pt").is_file()
    preds = Predictor(run / "best.pt", engine=Engine(device="cuda")).predict(
        np.zeros((5, 22, 52, 3), dtype=np.uint8))
    assert len(preds) == 5


def test_peak_on_cuda_is_positive() -> None:
    done = cli("peak", "--device", "cuda", "--precision", "fp32,bf16,fp16", "--seconds", "0.2", "--json")
    assert done.returncode == 0, done.stderr
    peaks = json.loads(done.stdout)
    assert [p["precision"] for p in peaks] == ["fp32", "bf16", "fp16"]
    assert all(p["flops_per_sec"] > 0 and p["device"].startswith("cuda") for p in peaks)
    assert peaks[1]["flops_per_sec"] > peaks[0]["flops_per_sec"]  # tensor cores: bf16 beats plain fp32
