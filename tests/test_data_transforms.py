"""Batched device transforms: exact results, determinism per generator, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from foldedcnns.data import transforms as T
from foldedcnns.data.imageio import resize_nearest
from foldedcnns.data.model_input import nhwc_to_float, to_model_input
from foldedcnns.errors import ShapeError
from foldedcnns.models.registry import get_task


def batch(n: int = 6, c: int = 3, h: int = 8, w: int = 10) -> torch.Tensor:
    return torch.arange(n * c * h * w, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(n, c, h, w)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_to_float_and_normalize() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    f = T.to_float(x)
    assert f.dtype == torch.float32 and torch.allclose(f.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    assert T.to_float(f) is f
    n = T.normalize(x, T.CIFAR_MEAN, T.CIFAR_STD)
    expected = (torch.tensor([0.0, 0.2, 1.0]) - torch.tensor(T.CIFAR_MEAN)) / torch.tensor(T.CIFAR_STD)
    assert torch.allclose(n.flatten(), expected)
    with pytest.raises(ShapeError, match=r"2 means .* for 3 channels"):
        T.normalize(f, (0.5, 0.5), (0.1, 0.1))
    with pytest.raises(ShapeError, match="uint8 or floating"):
        T.to_float(torch.zeros(1, dtype=torch.int32))


def test_frames_become_the_model_input_through_numpy_bit_for_bit_as_through_torch() -> None:
    """The NumPy path of to_model_input (uint8 NHWC frames on the CPU) gives PyTorch's values exactly, for every
    uint8 value, on a strided view too, with and without a task's mean and std."""
    frames = np.arange(2 * 5 * 7 * 3 * 2, dtype=np.int64).reshape(2, 5, 14, 3).astype(np.uint8)
    frames[0, 0, :2] = [[0, 128, 255], [1, 254, 127]]
    frames = frames[:, :, ::2]  # a strided view: (2, 5, 7, 3)
    every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    for task in (get_task("lol/goldnumber-fraction"), get_task("cifar10")):
        for images in (frames, every):
            got = to_model_input(images, task)  # NumPy
            want = to_model_input(torch.from_numpy(np.ascontiguousarray(images)), task)  # PyTorch
            assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == want.shape
            assert torch.equal(got, want)
    assert torch.equal(torch.from_numpy(nhwc_to_float(every)), T.to_float(torch.from_numpy(every).permute(0, 3, 1, 2)))


def test_random_crop_is_a_window_of_the_padded_image() -> None:
    x = batch()
    out = T.random_crop(x, (8, 10), padding=2, generator=gen(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, t:t + 8, s:s + 10] for t in range(5) for s in range(5)]
        assert any(torch.equal(out[i], win) for win in windows)
    assert T.random_crop(x, 4, generator=gen(1)).shape == (6, 3, 4, 4)
    with pytest.raises(ShapeError, match="larger than the padded image"):
        T.random_crop(x, 20, padding=1, generator=gen(1))


def test_random_transforms_are_deterministic_per_generator() -> None:
    x = batch(n=64)
    a = T.random_hflip(T.random_crop(x, 8, 4, gen(7)), gen(8))
    b = T.random_hflip(T.random_crop(x, 8, 4, gen(7)), gen(8))
    c = T.random_hflip(T.random_crop(x, 8, 4, gen(9)), gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_hflip_flips_about_half() -> None:
    x = batch(n=200)
    out = T.random_hflip(x, gen(3))
    flipped = [torch.equal(o, i.flip(2)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140
    assert torch.equal(T.random_hflip(x, gen(3), p=0.0), x)
    assert torch.equal(T.random_hflip(x, gen(3), p=1.0), x.flip(3))


@settings(deadline=None, max_examples=40)
@given(h=st.integers(1, 40), w=st.integers(1, 40), oh=st.integers(1, 40), ow=st.integers(1, 40))
def test_resize_nearest_matches_numpy_frames(h: int, w: int, oh: int, ow: int) -> None:
    x = torch.randint(0, 256, (2, 3, h, w), generator=gen(h * 41 + w), dtype=torch.uint8)
    out = T.resize(x, (oh, ow))
    ref = resize_nearest(x[1].permute(1, 2, 0).numpy(), (oh, ow))
    assert out.shape == (2, 3, oh, ow)
    assert np.array_equal(out[1].permute(1, 2, 0).numpy(), ref)


def test_resize_bilinear_keeps_dtype_and_range() -> None:
    x = torch.full((2, 3, 20, 20), 200, dtype=torch.uint8)
    out = T.resize(x, (10, 7), mode="bilinear")
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 10, 7) and int(out.min()) == int(out.max()) == 200
    assert T.resize(x.float(), 5, mode="bilinear").dtype == torch.float32
    with pytest.raises(ShapeError, match="unknown resize mode"):
        T.resize(x, 5, mode="cubic")
    with pytest.raises(ShapeError, match="batch"):
        T.resize(x[0], 5)


def test_cifar_augmentation_is_seeded_and_pads_uint8_with_black() -> None:
    x = torch.randint(1, 256, (8, 3, 32, 32), generator=gen(0), dtype=torch.uint8)

    def augment(generator: torch.Generator) -> torch.Tensor:
        return T.random_hflip(T.random_crop(x, T.CIFAR_CROP, T.CIFAR_PADDING, generator), generator)

    train = augment(gen(1))
    assert train.shape == (8, 3, 32, 32) and train.dtype == torch.uint8
    assert torch.equal(train, augment(gen(1)))
    assert (train == 0).any()  # some crops reach into the zero (black) padding; no input pixel is 0
