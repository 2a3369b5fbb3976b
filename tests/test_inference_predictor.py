"""Predictor: preprocessing, grouping in folds, batch handling and its errors."""

import numpy as np
import pytest
import torch

from foldedcnns.core.folding import fold, pad_to_multiple, round_batch, unfold_logits
from foldedcnns.data.crop import Crop
from foldedcnns.data.model_input import to_model_input
from foldedcnns.errors import ConfigError, DataError, ShapeError
from foldedcnns.inference import Predictions, Predictor, deployment_engine
from foldedcnns.inference.preprocess import stack_frames
from foldedcnns.models.spec import spec_from_dict
from foldedcnns.runtime import BACKENDS, Backend, Engine, Runner
from foldedcnns.runtime.checkpoint import model_from_checkpoint
from foldedcnns.runtime.threads import torch_threads


@pytest.fixture
def checkpoint(tiny_checkpoint, tiny_digits_task):
    """Factory ``fold -> checkpoint path`` of a tiny CNN on 22 x 52 RGB images with 11 classes."""
    return lambda fold: tiny_checkpoint(fold, task=tiny_digits_task)


def frames(n: int, height: int = 22, width: int = 52, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def test_predicts_one_row_per_image_in_order_with_own_group_padding(checkpoint):
    ckpt = checkpoint(fold=4)
    predictor = Predictor(ckpt, batch_size=8)
    images = frames(7)
    preds = predictor.predict(images)
    assert len(preds) == 7 and preds.probabilities.shape == (7, 11)
    # Reference: groups of 4 from the first image; the last group [4, 5, 6] is padded with image 4.
    model, _ = model_from_checkpoint(ckpt)
    x = to_model_input(images[[0, 1, 2, 3, 4, 5, 6, 4]], predictor.config.task)
    with torch.no_grad():
        expected = torch.softmax(unfold_logits(model.eval()(fold(x, 4)), 4)[:7], dim=1).numpy()
    np.testing.assert_allclose(preds.probabilities, expected, atol=1e-6)
    assert preds.labels.tolist() == expected.argmax(1).tolist()
    assert preds.names == [predictor.class_names[i] for i in preds.labels]
    np.testing.assert_allclose(preds.scores, expected.max(1), atol=1e-6)


def test_predictions_from_logits_are_the_softmax_its_largest_and_the_first_of_ties():
    logits = torch.tensor([[1.0, 3.0, -2.0], [0.5, 0.5, 0.5], [1e4, -1e4, 0.0]])
    preds = Predictions.from_logits(logits, ("a", "b", "c"))
    want = torch.softmax(logits, dim=1).numpy()
    np.testing.assert_allclose(preds.probabilities, want, rtol=1e-6, atol=1e-7)  # no overflow at 1e4
    assert preds.labels.dtype == np.int64 and preds.labels.tolist() == [1, 0, 0]  # a tie: the first
    np.testing.assert_array_equal(preds.scores, preds.probabilities.max(axis=1))
    assert preds.names == ["b", "a", "a"]
    same = Predictions.from_logits(logits.numpy().astype(np.float16), ("a", "b", "c"))  # any float dtype
    assert same.probabilities.dtype == np.float32 and same.labels.tolist() == [1, 0, 0]


def test_an_engine_on_numpy_arrays_predicts_what_the_torch_path_predicts(checkpoint):
    """openvino runs on NumPy arrays: predict_batch hands it a view of the input, no PyTorch call around it;
    the answers are those of the same engine fed a torch tensor."""
    pytest.importorskip("openvino")
    predictor = Predictor(checkpoint(fold=4), engine=Engine("openvino"), batch_size=8, partial_batches=True)
    assert predictor._numpy_io
    images = frames(5)
    via_numpy = predictor.predict_batch(images)
    with torch.inference_mode():
        logits = predictor.logits(to_model_input(images, predictor.config.task))
    assert isinstance(logits, torch.Tensor)
    via_torch = Predictions.from_logits(logits, predictor.class_names)
    np.testing.assert_array_equal(via_numpy.probabilities, via_torch.probabilities)
    assert via_numpy.labels.tolist() == via_torch.labels.tolist()


@pytest.mark.parametrize("batch_size", [4, 12, 20])
def test_predictions_do_not_depend_on_batch_size(checkpoint, batch_size):
    ckpt, images = checkpoint(fold=4), frames(23)
    reference = Predictor(ckpt, batch_size=8).predict(images)
    preds = Predictor(ckpt, batch_size=batch_size).predict(images)
    assert preds.labels.tolist() == reference.labels.tolist()
    np.testing.assert_allclose(preds.probabilities, reference.probabilities, atol=1e-6)


def test_padding_repeats_the_last_groups_own_images():
    x = torch.arange(6).view(6, 1)
    assert pad_to_multiple(x, 4)[0].flatten().tolist() == [0, 1, 2, 3, 4, 5, 4, 5]
    assert pad_to_multiple(x, 3)[0].flatten().tolist() == list(range(6))


def test_a_stack_at_the_models_size_is_copied_whole_into_a_new_writable_array():
    images = frames(5)
    view = np.frombuffer(images.tobytes(), np.uint8).reshape(images.shape)  # read-only, as an .npy body's view
    out = stack_frames(view, 22, 52)
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable and out.flags.c_contiguous and not np.shares_memory(out, view)
    assert [f.tolist() for f in stack_frames(list(images), 22, 52)] == [f.tolist() for f in out]
    with pytest.raises(DataError, match="image 0"):  # a wrong channel count still fails as before
        stack_frames(frames(2)[..., :2], 22, 52)


def test_images_of_other_sizes_are_cropped_and_resized_like_the_training_data(checkpoint):
    predictor = Predictor(checkpoint(fold=2), batch_size=4)
    big = frames(3, height=44, width=104, seed=1)
    small = big[:, ::2, ::2]  # nearest-neighbour 2x downscale (OpenCV's rule, the data pipeline's resize)
    assert len(predictor.predict(list(big))) == 3
    np.testing.assert_array_equal(predictor.predict(big).probabilities, predictor.predict(small).probabilities)
    # Cropping a frame that holds the image at (10, 5) gives the image's predictions exactly.
    canvas = np.zeros((3, 40, 80, 3), np.uint8)
    canvas[:, 5:27, 10:62] = small
    np.testing.assert_array_equal(predictor.predict(canvas, crop="10,5,52,22").probabilities,
                                  predictor.predict(small).probabilities)


def test_normalisation_follows_the_task(tiny_task):
    desc = {**tiny_task.to_dict(), "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    h, w = tiny_task.height, tiny_task.width
    batch = np.full((1, h, w, 3), 255, np.uint8)
    assert torch.allclose(to_model_input(batch, spec_from_dict(desc)), torch.full((1, 3, h, w), 2.0))
    del desc["mean"], desc["std"]
    assert torch.allclose(to_model_input(batch, spec_from_dict(desc)), torch.ones(1, 3, h, w))


def test_errors_name_the_problem_and_the_fix(checkpoint):
    with pytest.raises(ConfigError, match="not a multiple of the fold 4; pass 8 or 12"):
        Predictor(checkpoint(fold=4), batch_size=10)
    assert round_batch(10, 4, "exact" if 10 % 4 == 0 else "up") == 12
    assert Predictor(checkpoint(fold=3)).batch_size % 3 == 0
    predictor = Predictor(checkpoint(fold=1))
    with pytest.raises(ConfigError, match="does not fit in the 52x22 frames of image 0"):
        predictor.predict(frames(1), crop="40,0,20,10")
    with pytest.raises(ConfigError, match="--crop must be x,y,w,h"):
        Crop.parse("1,2,3")
    with pytest.raises(DataError, match="expected an RGB uint8 image"):
        predictor.predict([np.zeros((22, 52), np.float32)])
    with pytest.raises(ShapeError, match="use predict"):
        predictor.logits(torch.zeros(1, 3, 10, 10))
    with pytest.raises(ConfigError, match="unknown backend"):
        Predictor(checkpoint(fold=1), engine=Engine("tensorrt-9000"))
    with pytest.raises(ConfigError, match="--data DIR"):
        Predictor(checkpoint(fold=1), engine=Engine("onnxruntime", "int8"))


@pytest.mark.parametrize("backend", ["channels-last", "onnxruntime"])
def test_backends_of_the_benchmark_predict_like_eager(checkpoint, backend):
    ckpt, images = checkpoint(fold=4), frames(13)
    reference = Predictor(ckpt, batch_size=8).predict(images)
    predictor = Predictor(ckpt, engine=Engine(backend), batch_size=8)
    assert predictor.engine == Engine(backend) and (predictor.backend, predictor.precision) == (backend, "fp32")
    preds = predictor.predict(images)
    assert preds.labels.tolist() == reference.labels.tolist()
    np.testing.assert_allclose(preds.probabilities, reference.probabilities, atol=1e-5)


def test_the_default_engine_is_eager_fp32_on_the_cpu_and_auto_resolves(checkpoint):
    predictor = Predictor(checkpoint(fold=2))
    assert predictor.engine == Engine() == Engine("eager", "fp32", "cpu")
    assert (predictor.backend, predictor.precision, predictor.device) == ("eager", "fp32", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert Predictor(checkpoint(fold=2), engine=Engine(device="auto")).engine.device == "cpu"


def test_the_engines_threads_run_the_model_and_are_restored(checkpoint, monkeypatch):
    predictor = Predictor(checkpoint(fold=2), engine=Engine(threads=1), batch_size=4)
    assert predictor.engine.threads == 1
    seen = []
    classify = predictor._runner.classify
    monkeypatch.setattr(predictor._runner, "classify", lambda x: seen.append(torch.get_num_threads()) or classify(x))
    before = torch.get_num_threads()
    reference = Predictor(checkpoint(fold=2), batch_size=4).predict(frames(5))
    np.testing.assert_allclose(predictor.predict(frames(5)).probabilities, reference.probabilities, atol=1e-6)
    assert seen == [1, 1] and torch.get_num_threads() == before


def test_int8_is_calibrated_on_the_data_or_the_engines_own_images(checkpoint, tiny_digits_task, image_folder):
    pytest.importorskip("onnxruntime")
    ckpt, images = checkpoint(fold=2), frames(6)
    data = image_folder(tiny_digits_task, {"train": 2})
    by_data = Predictor(ckpt, engine=Engine("onnxruntime", "int8"), data=data, batch_size=4)
    assert by_data.precision == "int8" and "train" in by_data.calibration
    engine = deployment_engine(ckpt, Engine("onnxruntime", "int8"), data)
    assert engine.calibration is not None and engine.calibration.source == by_data.engine.calibration.source
    by_engine = Predictor(ckpt, engine=engine, batch_size=4)
    np.testing.assert_array_equal(by_engine.predict(images).probabilities, by_data.predict(images).probabilities)
    # other precisions are deployed as they are: the checkpoint is not even read
    assert deployment_engine("no/such/file.pt", Engine("onnxruntime"), data) == Engine("onnxruntime")
    with pytest.raises(ConfigError, match="--data DIR"):
        deployment_engine(ckpt, Engine("openvino", "int8"))


@pytest.mark.slow  # an OpenVINO conversion and two compilations
def test_an_openvino_ir_runs_on_the_cpu_with_the_engines_threads(checkpoint, tmp_path):
    pytest.importorskip("openvino")
    from foldedcnns.inference.export_openvino import export_openvino

    ckpt, images = checkpoint(fold=2), frames(5)
    export_openvino(ckpt, tmp_path / "model.xml", check=False)
    ir = Predictor(tmp_path / "model.xml", engine=Engine("eager", threads=1), batch_size=4)
    assert ir.engine == Engine("openvino", "fp32", "cpu", threads=1)
    np.testing.assert_allclose(ir.predict(images).probabilities,
                               Predictor(ckpt, batch_size=4).predict(images).probabilities, atol=1e-5)
    with pytest.raises(ConfigError, match="--device"):  # an IR on a GPU: drop --device (or no GPU here: --device cpu)
        Predictor(tmp_path / "model.xml", engine=Engine(device="cuda"))


def test_pytorch_prepares_the_input_on_one_thread_when_another_engine_runs_the_model(tiny_checkpoint, monkeypatch):
    """An engine with its own threads (openvino, onnxruntime) must not share its cores with PyTorch's idle,
    spinning threads: the whole predict_batch runs on one PyTorch thread, and the count is restored."""
    seen: list[int] = []

    class OwnThreads(Backend):
        name = "own-threads"
        torch_runs_model = False

        def build(self, model, example, engine, fold):
            def run(x):
                seen.append(torch.get_num_threads())
                with torch.inference_mode():
                    return model(x)

            return Runner(run, lambda x: x, lambda y: y)

    monkeypatch.setitem(BACKENDS, OwnThreads.name, OwnThreads())
    predictor = Predictor(tiny_checkpoint(2), engine=Engine(OwnThreads.name, threads=2))
    with torch_threads(2):
        seen.clear()
        predictor.predict_batch(np.zeros((4, *predictor.input_hw, 3), np.uint8))
        assert seen == [1] and torch.get_num_threads() == 2
