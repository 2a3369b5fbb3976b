"""Fold/unfold are pure shape maps: round trips, group order and the wrapper at any batch size."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from foldedcnns import FoldedClassifier, fold, pad_to_multiple, unfold, unfold_logits
from foldedcnns.core import run_folded
from foldedcnns.errors import ConfigError, ShapeError

shapes = st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))


@settings(deadline=None, max_examples=60)
@given(shapes)
def test_fold_unfold_round_trip(shape):
    groups, f, c, h, w = shape
    x = torch.randn(groups * f, c, h, w)
    folded = fold(x, f)
    assert folded.shape == (groups, f * c, h, w)
    assert torch.equal(unfold(folded, f), x)


@settings(deadline=None, max_examples=60)
@given(shapes)
def test_image_j_fills_channel_block_j(shape):
    groups, f, c, h, w = shape
    x = torch.randn(groups * f, c, h, w)
    folded = fold(x, f)
    for g in range(groups):
        for j in range(f):
            assert torch.equal(folded[g, j * c:(j + 1) * c], x[g * f + j])


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(1, 7))
def test_unfold_logits_block_j_is_image_j(groups, f, k):
    y = torch.randn(groups, f * k)
    per_image = unfold_logits(y, f)
    assert per_image.shape == (groups * f, k)
    for g in range(groups):
        for j in range(f):
            assert torch.equal(per_image[g * f + j], y[g, j * k:(j + 1) * k])


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 13), st.integers(1, 5))
def test_pad_repeats_real_images(n, f):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1) + 1
    padded, pad = pad_to_multiple(x, f)
    assert padded.shape[0] % f == 0 and padded.shape[0] - n == pad < f
    assert torch.equal(padded[:n], x)
    assert set(padded[n:].flatten().tolist()) <= set(x.flatten().tolist())  # no zeros, only batch images


@pytest.mark.parametrize("n", [1, 3, 4, 6])
def test_numpy_batches_fold_pad_and_unfold_as_tensors_do(n):
    """The folding maps take the NumPy arrays of a CPU engine's I/O and give what they give for tensors."""
    x = torch.rand(n, 3, 2, 5, generator=torch.Generator().manual_seed(n))
    padded, pad = pad_to_multiple(x, 4)
    padded_np, pad_np = pad_to_multiple(x.numpy(), 4)
    assert isinstance(padded_np, np.ndarray) and pad_np == pad
    np.testing.assert_array_equal(padded_np, padded.numpy())
    np.testing.assert_array_equal(fold(padded_np, 4), fold(padded, 4).numpy())
    y = torch.rand(len(padded) // 4, 4 * 7)
    np.testing.assert_array_equal(unfold_logits(y.numpy(), 4), unfold_logits(y, 4).numpy())
    model = PerImageModel(4, 3, 7)
    with torch.no_grad():
        want = run_folded(model, x, 4)
    got = run_folded(lambda g: model(torch.from_numpy(g)).numpy(), x.numpy(), 4)
    assert isinstance(got, np.ndarray) and got.shape == (n, 7)
    np.testing.assert_array_equal(got, want.numpy())
    with pytest.raises(ShapeError, match="4-D batch"):
        fold(np.zeros((4, 3, 2)), 4)


class PerImageModel(nn.Module):
    """A folded 'model' whose logits for image j depend only on image j: mean pixel times class index."""

    def __init__(self, f: int, c: int, k: int) -> None:
        super().__init__()
        self.f, self.c, self.k = f, c, k

    def forward(self, x):
        g = x.shape[0]
        means = x.reshape(g, self.f, self.c, -1).mean(dim=(2, 3))  # (G, f)
        scale = torch.arange(1, self.k + 1, dtype=x.dtype)
        return (means[:, :, None] * scale).reshape(g, self.f * self.k)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9])
@pytest.mark.parametrize("f", [1, 2, 3, 4])
def test_wrapper_any_batch_size_matches_per_image(n, f):
    c, k = 3, 4
    x = torch.rand(n, c, 5, 5)
    out = FoldedClassifier(PerImageModel(f, c, k), fold=f, in_channels=c)(x)
    expected = x.mean(dim=(1, 2, 3))[:, None] * torch.arange(1, k + 1, dtype=x.dtype)
    assert out.shape == (n, k)
    assert torch.allclose(out, expected, atol=1e-6)


def test_wrapper_result_does_not_depend_on_batch_composition():
    from foldedcnns import build_model

    torch.manual_seed(0)
    model = build_model("apex/squad_count_v2", fold=3).eval()
    wrapper = FoldedClassifier(model, fold=3)
    x = torch.rand(7, 3, 19, 25)
    with torch.no_grad():
        full = wrapper(x)
        assert full.shape == (7, 22)
        # The first 6 images form two complete groups: the same logits whether or not image 7 is present.
        assert torch.allclose(wrapper(x[:6]), full[:6], atol=1e-5)


def test_errors():
    x = torch.rand(4, 3, 5, 5)
    with pytest.raises(ConfigError, match="fold must be an integer >= 1"):
        fold(x, 0)
    with pytest.raises(ShapeError, match="4-D"):
        fold(torch.rand(4, 3, 5), 2)
    with pytest.raises(ShapeError, match="not a multiple of fold 3"):
        fold(x, 3)
    with pytest.raises(ShapeError, match="not a multiple"):
        unfold_logits(torch.rand(2, 7), 2)
    wrapper = FoldedClassifier(PerImageModel(2, 3, 2), fold=2, in_channels=3)
    with pytest.raises(ShapeError, match="expected 3 channels per image, got 1"):
        wrapper(torch.rand(4, 1, 5, 5))
    with pytest.raises(ShapeError, match="4-D"):
        wrapper(torch.rand(3, 5, 5))
    with pytest.raises(ShapeError, match="empty"):
        wrapper(torch.rand(0, 3, 5, 5))
