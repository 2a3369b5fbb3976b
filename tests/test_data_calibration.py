"""Calibration images come from a data set's train (else val) split, seeded; bad data is a one-line error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foldedcnns.data.calibration import load_calibration
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.models import spec_from_dict

HEIGHT, WIDTH, CLASSES = 15, 35, ("a", "b", "c")
DESCRIPTION = {"name": "test/int8", "family": "game", "out-h": HEIGHT, "out-w": WIDTH, "chan-in": 3,
               "ClassNames": list(CLASSES),
               "model-architecture": {"n-conv-units": 1, "conv1_n_feature_maps": 8, "convi_n_feature_maps": 8,
                                      "convn_n_feature_maps": 4}}


def write_split(root: Path, per_class: int, rng: np.random.Generator, size: tuple[int, int] = (HEIGHT, WIDTH),
                classes: tuple[str, ...] = CLASSES) -> None:
    """root/<class>/<i>.png of noise."""
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_calibration_data_errors_are_one_line(tmp_path: Path) -> None:
    spec = spec_from_dict(DESCRIPTION)
    with pytest.raises(DataError, match="does not exist"):
        load_calibration(tmp_path / "nowhere", spec)
    (tmp_path / "flat").mkdir()
    with pytest.raises(ConfigError, match="no train/ or val/ split"):
        load_calibration(tmp_path / "flat", spec)
    write_split(tmp_path / "small" / "train", 2, np.random.default_rng(0), size=(8, 8))
    with pytest.raises(DataError, match=r"3x8x8 \(CxHxW\) but task test/int8 reads 3x15x35") as info:
        load_calibration(tmp_path / "small", spec)
    for name in CLASSES:
        (tmp_path / "empty" / "train" / name).mkdir(parents=True)
    with pytest.raises(DataError, match="no images in") as empty:
        load_calibration(tmp_path / "empty", spec)
    write_split(tmp_path / "other" / "val", 1, np.random.default_rng(0), classes=("x", "y"))
    with pytest.raises(DataError, match="not classes of the task") as other:
        load_calibration(tmp_path / "other", spec)
    for exc in (info.value, empty.value, other.value):
        assert "\n" not in str(exc)


def test_calibration_reads_a_seeded_subset_of_the_train_split(tmp_path: Path) -> None:
    spec = spec_from_dict(DESCRIPTION)
    write_split(tmp_path / "train", 5, np.random.default_rng(0))
    first = load_calibration(tmp_path, spec, images=7, seed=3)
    assert first.images.shape == (7, 3, HEIGHT, WIDTH) and first.images.dtype == torch.float32
    assert torch.equal(first.images, load_calibration(tmp_path, spec, images=7, seed=3).images)
    assert not torch.equal(first.images, load_calibration(tmp_path, spec, images=7, seed=4).images)
    assert load_calibration(tmp_path, spec, images=1000).images.shape[0] == 15  # all there is
