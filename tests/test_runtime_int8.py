"""INT8 post-training quantization: both engines against fp32, calibration through the Engine."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from foldedcnns import build_model
from foldedcnns.cli.bench import bench_calibration
from foldedcnns.data.calibration import Calibration, load_calibration
from foldedcnns.data.folder import ImageFolder
from foldedcnns.errors import ConfigError, ShapeError
from foldedcnns.inference.predictor import Predictor
from foldedcnns.models import spec_from_dict
from foldedcnns.runtime import Engine, model_from_checkpoint, to_model_input
from foldedcnns.runtime.backends import BACKENDS, calibration_notice
from foldedcnns.runtime.backends.quantize import RANDOM_SOURCE, folded_calibration
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



@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_int8_agrees_with_fp32_on_a_trained_models_test_images(colour_classifier: tuple[Path, Path],
                                                               engine: str) -> None:
    needs(engine)
    ckpt, data = colour_classifier
    model, config = model_from_checkpoint(ckpt)
    images, labels = ImageFolder(data / "test", classes=config.task.class_names).tensors()
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
        assert not ok and ("openvino" in reason or "--device cuda" in reason)


def test_predictor_int8_needs_calibration_images(colour_classifier: tuple[Path, Path]) -> None:
    needs("onnxruntime")
    ckpt, data = colour_classifier
    with pytest.raises(ConfigError, match="pass --data DIR"):
        Predictor(ckpt, engine=Engine("onnxruntime", "int8"))
    int8 = Predictor(ckpt, engine=Engine("onnxruntime", "int8"), data=data, batch_size=32)
    fp32 = Predictor(ckpt, batch_size=32)
    images, _ = ImageFolder(data / "test", classes=CLASSES).tensors()
    frames = images[:50].permute(0, 2, 3, 1).numpy()  # RGB frames (N, H, W, 3), as a video decoder gives them
    assert int8.calibration is not None and "train" in int8.calibration
    assert (int8.predict(frames).labels == fp32.predict(frames).labels).mean() >= 0.98
