"""The Engine value: checked when made, picklable, prepares through its backend's template, and a new backend is
one class plus one registration."""

import pickle

import pytest
import torch

from foldedcnns.data.calibration import Calibration
from foldedcnns.errors import ConfigError
from foldedcnns.models import build_model
from foldedcnns.runtime import BACKENDS, Backend, Engine, Runner, default_backends, register_backend
from foldedcnns.runtime.backends import BackendUnavailable, quantizing_backends


@pytest.fixture()
def model(tiny_noscope_task):
    torch.manual_seed(0)
    return build_model(tiny_noscope_task, fold=2).eval()


def test_an_engine_is_checked_when_made_with_the_fix_in_one_line():
    with pytest.raises(ConfigError, match=r"unknown backend 'opnvino'.*did you mean 'openvino'"):
        Engine("opnvino")
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        Engine("eager", "int4")
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        Engine(device="gpu0")
    with pytest.raises(ConfigError, match="--threads must be an integer"):
        Engine(threads=0)


def test_an_engine_describes_a_gpu_without_one_and_pickles_with_its_calibration():
    calibration = Calibration(torch.rand(3, 3, 4, 4), "3 images")
    engine = Engine("onnxruntime", "int8", "cuda:1", 2, calibration)
    assert engine.device == "cuda:1" and engine.quantized
    copy = pickle.loads(pickle.dumps(engine))
    assert copy.backend == "onnxruntime" and torch.equal(copy.calibration.images, calibration.images)
    assert Engine(calibration=torch.rand(2, 3, 4, 4)).calibration.source == "2 given images"


def test_engine_prepare_runs_the_template_and_reports_what_it_ran(model):
    prepared = Engine("channels-last", threads=1).prepare(model, batch_images=5)
    assert prepared.engine == Engine("channels-last", threads=1)
    assert (prepared.backend, prepared.precision, prepared.device.type) == ("channels-last", "fp32", "cpu")
    assert prepared.fold == 2 and prepared.setup_seconds > 0 and prepared.calibration is None
    images = torch.rand(5, *model.config.image_size)
    expected = Engine().prepare(model, 6).classify(images)
    torch.testing.assert_close(prepared.classify(images), expected, rtol=1e-4, atol=1e-5)


def test_an_engine_that_cannot_run_here_is_a_config_error(model):
    with pytest.raises(ConfigError, match="backend eager cannot run int8 on cpu here"):
        Engine("eager", "int8").prepare(model, 4)


def test_default_backends_are_one_list_per_device_type():
    assert default_backends("cpu") == default_backends("cpu") and "eager" in default_backends("cpu")
    assert "cuda-graphs" in default_backends("cuda:1") and "cuda-graphs" not in default_backends("cpu")
    assert set(quantizing_backends()) == {"onnxruntime", "openvino", "openvino-streams"}


class CountingBackend(Backend):
    """A toy engine: eager underneath, counting its builds."""

    name = "toy-counting"
    quantizes = True
    builds = 0

    def build(self, model, example, engine, fold):
        type(self).builds += 1
        cast = torch.nn.Sequential(model).eval()

        def run(x):
            with torch.inference_mode():
                return cast(x)

        return Runner(run, lambda x: x.float(), lambda y: y)


@pytest.fixture()
def toy():
    register_backend(CountingBackend)
    yield CountingBackend
    del BACKENDS[CountingBackend.name]


def test_a_registered_backend_is_an_engine_with_the_shared_checks(model, toy):
    assert toy.name in BACKENDS and toy.name in quantizing_backends()
    with pytest.raises(ConfigError, match="registered already"):
        register_backend(toy)
    prepared = Engine(toy.name, "int8").prepare(model, 4)
    assert toy.builds >= 1 and prepared.calibration.startswith("random input")
    ok, reason = Engine(toy.name).runner.is_available("cuda", "fp32")
    assert ok == torch.cuda.is_available(), reason


def test_a_build_whose_check_call_fails_is_unavailable(model, toy, monkeypatch):
    monkeypatch.setattr(toy, "build", lambda self, *a: Runner(lambda x: x[:1], lambda x: x, lambda y: y))
    with pytest.raises(BackendUnavailable, match="returned 1 rows for 2 inputs"):
        Engine(toy.name).prepare(model, 4)


def test_pytorch_keeps_one_thread_when_another_engine_runs_the_model():
    assert Engine("eager", threads=2).pytorch_threads == 2 and Engine().pytorch_threads is None
    assert Engine("openvino", threads=2).pytorch_threads == 1 and Engine("onnxruntime").pytorch_threads == 1
