"""Backends give the eager model's logits, refuse what they cannot run with a reason, and leave the model alone."""

import numpy as np
import pytest
import torch

from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import (
    BACKENDS,
    BackendUnavailable,
    CompileBackend,
    CudaGraphsBackend,
    OnnxRuntimeBackend,
    get_backend,
)
from foldedcnns.runtime.backends.base import partial_shapes
from foldedcnns.runtime.engine import Engine

# torch.compile cases are slow: inductor's first compilation alone takes seconds on 2 CPU cores.
COMPILE = pytest.param("compile", marks=pytest.mark.slow)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def model(noscope_model):
    return noscope_model


@pytest.mark.parametrize("name", ["eager", "channels-last", "onnxruntime"])
def test_fp32_backends_match_eager(model, name):
    x = torch.rand(5, *model.config.input_shape)
    with torch.no_grad():
        expected = model(x)
    prepared = get_backend(name).prepare(model, x[:2], Engine(name))
    out = prepared.folded(x)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert prepared.setup_seconds > 0
    assert prepared.numpy_io == (name == "onnxruntime")  # ONNX Runtime's CPU provider runs on NumPy arrays
    if prepared.numpy_io:
        np.testing.assert_array_equal(prepared.folded(x.numpy()), out.numpy())
    else:
        with pytest.raises(TypeError, match="takes torch tensors"):
            prepared.folded(x.numpy())


def test_reduced_precision_is_close_and_leaves_the_callers_model_in_fp32(model):
    x = torch.rand(4, *model.config.input_shape)
    with torch.no_grad():
        expected = model(x)
    out = get_backend("channels-last").prepare(model, x, Engine("channels-last", "bf16")).folded(x)
    assert next(model.parameters()).dtype == torch.float32
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0.1, atol=0.05)


def test_unsupported_combinations_say_why():
    assert OnnxRuntimeBackend().is_available("cpu", "bf16") == (False, "ONNX Runtime has no bf16 convolution on cpu")
    ok, reason = CudaGraphsBackend().is_available("cpu", "fp32")
    assert not ok and "--device cuda" in reason
    with pytest.raises(BackendUnavailable, match="runs on cuda; use --device cuda"):
        CudaGraphsBackend().prepare(torch.nn.Linear(2, 2), torch.zeros(1, 2), Engine("cuda-graphs"))
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend("tensorrt")
    assert set(BACKENDS) == {"eager", "channels-last", "compile", "onnxruntime", "cuda-graphs", "openvino",
                             "openvino-streams"}


def test_a_kernel_that_fails_in_the_check_call_makes_the_backend_unavailable():
    class NoHalf(torch.nn.Module):
        def forward(self, x):
            if x.dtype == torch.float16:
                raise RuntimeError("\"conv\" not implemented for 'Half'\nmore detail")
            return x

    with pytest.raises(BackendUnavailable, match=r"^\"conv\" not implemented for 'Half'$"):
        get_backend("eager").prepare(NoHalf(), torch.zeros(2, 3), Engine("eager", "fp16"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_a_gpu_is_refused_with_the_fix(model):
    with pytest.raises(BackendUnavailable, match="CUDA is not available on this machine; use --device cpu"):
        get_backend("eager").prepare(model, torch.zeros(1, *model.config.input_shape), Engine(device="cuda"))


@pytest.mark.slow  # torch.compile: inductor's first compilation alone takes seconds
@pytest.mark.parametrize("freeze", [True, False])
def test_compile_matches_eager_and_freezing_makes_weights_constants(model, freeze):
    x = torch.rand(3, *model.config.input_shape)
    with torch.no_grad():
        expected = model(x)
    prepared = CompileBackend(freeze=freeze).prepare(model, x, Engine("compile"))
    torch.testing.assert_close(prepared.folded(x), expected, rtol=1e-4, atol=1e-5)
    copy = prepared.module  # the backend's own cast copy of the model
    with torch.no_grad():
        for p in copy.parameters():
            p.zero_()
    # frozen: the weights were folded into the compiled code; unfrozen: they are still read at run time
    changed = not torch.allclose(prepared.folded(x), expected, rtol=1e-4, atol=1e-5)
    assert changed is not freeze


@pytest.mark.parametrize("name", ["eager", COMPILE])
def test_the_runner_classifies_any_number_of_images_with_own_group_padding(model, name):
    """classify(): pad the last group with its own images, fold, run, unfold; a static-shape backend
    pads every call to its prepared shape and cuts larger ones, so any N works without recompiling."""
    images = torch.rand(7, *model.config.image_size)
    prepared = get_backend(name).prepare(model, torch.rand(2, *model.config.input_shape), Engine(name))
    assert prepared.fold == 2 and prepared.static_inputs == (2 if name == "compile" else None)
    for n, order in ((1, [0, 0]), (3, [0, 1, 2, 2]), (7, [0, 1, 2, 3, 4, 5, 6, 6])):
        folded = images[order].reshape(len(order) // 2, -1, *images.shape[2:])
        with torch.no_grad():
            expected = model(folded).reshape(len(order), -1)[:n]
        torch.testing.assert_close(prepared.classify(images[:n]), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("inputs", "shapes"), [(1, []), (2, [1]), (3, [1, 2]), (16, [1, 2, 4, 8]),
                                                (17, [1, 2, 4, 8, 16])])
def test_partial_shapes_are_the_powers_of_two_below_the_full_one(inputs, shapes):
    assert partial_shapes(inputs) == shapes


def test_a_static_runner_with_partial_batches_runs_each_call_at_the_smallest_shape_that_holds_it(model):
    """A server's batches vary: a call of G folded inputs runs at the smallest prepared shape >= G, padded with
    its own last input, so a batch of 4 images does not cost what a full batch of 64 costs."""
    calls: list[int] = []

    class Static(type(get_backend("eager"))):
        static_shapes = True

        def build(self, module, example, engine, fold):
            runner = super().build(module, example, engine, fold)
            size = int(example.shape[0])

            def run(x):
                assert x.shape[0] == size  # a static shape is only ever called at its size
                calls.append(size)
                return runner.run(x)

            return runner._replace(run=run)

    x = torch.rand(16, *model.config.input_shape)
    with torch.no_grad():
        expected = model(x)
    plain = Static().prepare(model, x[:8], Engine())
    ladder = Static().prepare(model, x[:8], Engine(), partial_batches=True)
    assert plain.shapes == (8,) and ladder.shapes == (1, 2, 4, 8) and ladder.static_inputs == 8
    for n, runs in ((1, [1]), (3, [4]), (5, [8]), (8, [8]), (11, [8, 4]), (16, [8, 8])):
        calls.clear()
        torch.testing.assert_close(ladder.folded(x[:n]), expected[:n], rtol=1e-4, atol=1e-5)
        assert calls == runs
        calls.clear()
        plain.folded(x[:n])
        assert calls == [8] * -(-n // 8)  # without partial batches every call is padded to the full shape
    assert get_backend("eager").prepare(model, x[:8], Engine(), partial_batches=True).shapes == ()  # any shape
