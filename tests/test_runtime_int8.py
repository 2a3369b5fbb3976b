"""INT8 post-training quantization: both engines against fp32, calibration through the Engine, tune's accuracy cost."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foldedcnns import build_model
from foldedcnns.benchmark.tune import TuneConfig, load_test_images, tune
from foldedcnns.cli.bench import bench_calibration
from foldedcnns.core.folding import eval_order, run_folded
from foldedcnns.data.calibration import Calibration, load_calibration
from foldedcnns.data.folder import ImageFolder
from foldedcnns.errors import ConfigError, ShapeError
from foldedcnns.inference.predictor import Predictor
from foldedcnns.models import spec_from_dict
from foldedcnns.runtime import Engine, model_from_checkpoint, to_model_input
from foldedcnns.runtime.backends import BACKENDS, calibration_notice
from foldedcnns.runtime.backends.quantize import RANDOM_SOURCE, folded_calibration
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.training.trainer import evaluate

ENGINES = ("openvino", "onnxruntime")
MISSING = {"openvino": ("openvino", "nncf"), "onnxruntime": ("onnxruntime", "onnx")}
HEIGHT, WIDTH, CLASSES = 15, 35, ("a", "b", "c")
DESCRIPTION = {"name": "test/int8", "family": "game", "out-h": HEIGHT, "out-w": WIDTH, "chan-in": 3,
               "ClassNames": list(CLASSES),
               "model-architecture": {"n-conv-units": 1, "conv1_n_feature_maps": 8, "convi_n_feature_maps": 8,
                                      "convn_n_feature_maps": 4}}


def needs(engine: str) -> None:
    missing = [m for m in MISSING[engine] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{engine} int8 needs {', '.join(missing)}")


def write_split(root: Path, per_class: int, rng: np.random.Generator, size: tuple[int, int] = (HEIGHT, WIDTH),
                classes: tuple[str, ...] = CLASSES) -> None:
    """root/<class>/<i>.png; class k lights colour channel k % 3 over noise (learnable in a few epochs)."""
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 80, size=(*size, 3), dtype=np.uint8)
            image[:, :, k % 3] += 150
            Image.fromarray(image).save(root / name / f"{i}.png")


TRAIN_STEPS, TRAIN_BATCH = 80, 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, data folder) of a tiny f=2 CNN trained (Adam, 80 steps of 16 images; about a second on one
    thread) on colour classes of ``DIR/train`` (40 images per class); ``DIR/test`` has 70 per class."""
    root = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 70)):
        write_split(root / "data" / split, n, rng)
    spec = spec_from_dict(DESCRIPTION)
    images, labels = ImageFolder(root / "data" / "train", classes=CLASSES).tensors()
    x = to_model_input(images, spec, layout="nchw")
    with torch.random.fork_rng(devices=[]), torch_threads(1):  # one thread: the machine may be shared
        torch.manual_seed(0)
        model = build_model(spec, fold=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(TRAIN_STEPS):
            pick = torch.randint(0, len(labels), (TRAIN_BATCH,))
            loss = torch.nn.functional.cross_entropy(run_folded(model, x[pick], 2), labels[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return save_checkpoint(root / "tiny.pt", make_checkpoint(model.eval())), root / "data"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_int8_agrees_with_fp32_on_a_trained_models_test_images(trained: tuple[Path, Path], engine: str) -> None:
    needs(engine)
    ckpt, data = trained
    model, config = model_from_checkpoint(ckpt)
    images, labels = load_test_images(data, config.task.class_names)
    x = to_model_input(images, config.task, layout="nchw")
    fp32 = Engine().prepare(model, 64).classify(x).argmax(1)
    calibration = load_calibration(data, config.task)
    assert calibration.images.shape == (120, 3, HEIGHT, WIDTH) and "train" in calibration.source
    assert int(fp32.ne(labels).sum()) == 0
    int8 = Engine(engine, "int8", calibration=calibration).prepare(model, 64)
    assert int8.calibration == calibration.source
    int8_pred = int8.classify(x).argmax(1)
    assert float((int8_pred == fp32).float().mean()) >= 0.99
    # evaluate() runs the checkpoint as deployed: the same engine, precision and calibration
    deployed = evaluate(ckpt, data, "test", batch_size=64, engine=Engine(engine, "int8", calibration=calibration))
    assert deployed["top1"] == pytest.approx(100 * float((int8_pred == labels).float().mean()), abs=1.5)
    assert deployed["images"] == len(labels)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_prepare_takes_calibration_images_or_says_it_used_random_input(engine: str) -> None:
    needs(engine)
    spec = spec_from_dict(DESCRIPTION)
    model = build_model(spec, fold=2).eval()
    example = torch.rand(3, *model.config.input_shape)
    given = BACKENDS[engine].prepare(model, example, Engine(engine, "int8",
                                                            calibration=torch.rand(10, 3, HEIGHT, WIDTH)))
    assert given.calibration == "10 given images"
    assert given.folded(example).shape == (3, 2 * len(CLASSES))
    random = BACKENDS[engine].prepare(model, example, Engine(engine, "int8"))
    assert random.calibration == RANDOM_SOURCE
    with pytest.raises(ShapeError, match="calibration images are"):
        BACKENDS[engine].prepare(model, example, Engine(engine, "int8", calibration=torch.rand(4, 3, 8, 8)))


def test_calibration_folds_images_with_the_padding_rule() -> None:
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.float32).reshape(5, 3, 2, 2)
    folded = folded_calibration(Calibration(images, "five"), torch.zeros(1, 6, 2, 2), 2)
    assert folded.shape == (3, 6, 2, 2)
    assert np.array_equal(folded[2, 3:], images[4].numpy())  # the last group repeats its own image
    assert folded_calibration(None, torch.zeros(1, 6, 2, 2), 2).shape[1:] == (6, 2, 2)


def test_notices_and_engines_carry_the_calibration() -> None:
    calibration = Calibration(torch.rand(2, 3, 4, 4), "2 images of DIR/train")
    assert calibration_notice(("fp32", "bf16"), None) is None
    assert calibration_notice(("int8",), None) == f"int8 is calibrated on {RANDOM_SOURCE}"
    assert calibration_notice(("int8",), calibration) == "int8 is calibrated on 2 images of DIR/train"
    engine = Engine("openvino", "int8", calibration=calibration)
    assert engine.calibration is calibration and engine.for_deployment(spec_from_dict(DESCRIPTION)) is engine
    with pytest.raises(ConfigError, match="pass --data DIR"):
        Engine("onnxruntime", "int8").for_deployment(spec_from_dict(DESCRIPTION))
    assert Engine("onnxruntime", "fp32").for_deployment(spec_from_dict(DESCRIPTION)).calibration is None
    with pytest.raises(ConfigError, match="one task"):
        bench_calibration(("lol/goldnumber-fraction", "lol/timer-minutes"), ("int8",), "somewhere")
    assert bench_calibration(("lol/goldnumber-fraction", "lol/timer-minutes"), ("fp32",), "somewhere") is None


def test_torch_backends_report_int8_unavailable() -> None:
    for name in ("eager", "channels-last", "compile", "cuda-graphs"):
        ok, reason = BACKENDS[name].is_available("cpu", "int8")
        assert not ok and ("openvino" in reason or "CUDA" in reason)


def test_predictor_int8_needs_calibration_images(trained: tuple[Path, Path]) -> None:
    needs("onnxruntime")
    ckpt, data = trained
    with pytest.raises(ConfigError, match="pass --data DIR"):
        Predictor(ckpt, engine=Engine("onnxruntime", "int8"))
    int8 = Predictor(ckpt, engine=Engine("onnxruntime", "int8"), data=data, batch_size=32)
    fp32 = Predictor(ckpt, batch_size=32)
    images, _ = load_test_images(data, CLASSES)
    frames = images[:50].permute(0, 2, 3, 1).numpy()  # RGB frames (N, H, W, 3), as a video decoder gives them
    assert int8.calibration is not None and "train" in int8.calibration
    assert (int8.predict(frames).labels == fp32.predict(frames).labels).mean() >= 0.98


@pytest.mark.slow
def test_tune_folds_test_images_in_evaluates_order_not_class_by_class(trained: tuple[Path, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, data = trained
    seen: list[torch.Tensor] = []
    tune_module = importlib.import_module("foldedcnns.benchmark.tune")  # the package exports tune() by that name
    real = tune_module.predict
    monkeypatch.setattr(tune_module, "predict", lambda prepared, x, n: seen.append(x) or real(prepared, x, n))
    config = TuneConfig(target=str(ckpt), backends=("eager",), precisions=("fp32", "bf16"), batch_sizes=(32,),
                        trials=1, screen_seconds=0.05, final_seconds=0.05, final_warmup=1, peak_seconds=0,
                        data=str(data))
    tune(config, on_notice=lambda _: None)
    _, config_ = model_from_checkpoint(ckpt)
    images, labels = load_test_images(data, config_.task.class_names)
    order = eval_order(len(labels), config_.fold)
    assert seen and not torch.equal(order, torch.arange(len(labels)))  # the folder lists images class by class
    torch.testing.assert_close(seen[0], to_model_input(images[order], config_.task, layout="nchw"))


@pytest.mark.slow
def test_tune_reports_int8_accuracy_beside_bf16_and_applies_the_limit(trained: tuple[Path, Path]) -> None:
    for engine in ENGINES:
        needs(engine)
    ckpt, data = trained
    notices: list[str] = []
    config = TuneConfig(target=str(ckpt), backends=("eager", "openvino", "onnxruntime"),
                        precisions=("fp32", "bf16", "int8"), batch_sizes=(32,), trials=1, screen_seconds=0.05,
                        final_seconds=0.05, final_warmup=1, peak_seconds=0, data=str(data), max_accuracy_drop=-1.0)
    result = tune(config, on_notice=notices.append)
    costs = {(c.backend, c.precision): c for c in result.costs}
    assert {("openvino", "int8"), ("onnxruntime", "int8"), ("openvino", "bf16")} <= set(costs)
    assert costs["openvino", "int8"].agreement >= 0.99 and costs["onnxruntime", "int8"].agreement >= 0.99
    # measured on the f=2 checkpoint's trained weights (not on the random-weight original tuned beside it)
    assert costs["openvino", "int8"].fp32_accuracy == pytest.approx(evaluate(ckpt, data, "test")["top1"] / 100)
    assert costs["openvino", "int8"].fp32_accuracy >= 0.9
    assert any("int8 is calibrated on 120 images of" in n for n in notices)
    # every precision lost more than -1 points, so only fp32 is left in the search
    assert {r.precision for r in result.final} == {"fp32"}
