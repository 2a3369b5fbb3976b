"""Image folders, image decoding and atomic output folders (all data made in tmp_path)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foldedcnns.data.folder import ImageFolder, find_classes
from foldedcnns.data.imageio import read_image, resize_nearest, write_png
from foldedcnns.errors import DataError
from foldedcnns.utils.atomic import atomic_directory

# The conftest's class_folders(root, counts, size=(6, 8)) writes root/<class>/<i>.png and returns the images.
ClassFolders = Callable[..., dict[str, list[np.ndarray]]]


def test_find_classes_sorted(tmp_path: Path, class_folders: ClassFolders) -> None:
    class_folders(tmp_path, {"b": 1, "a": 1, "10": 1, "2": 1})
    (tmp_path / ".hidden").mkdir()
    classes, index = find_classes(tmp_path)
    assert classes == ["10", "2", "a", "b"]
    assert index == {"10": 0, "2": 1, "a": 2, "b": 3}


def test_find_classes_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        find_classes(tmp_path / "nope")
    with pytest.raises(DataError, match="no class folders"):
        find_classes(tmp_path)


def test_items_labels_and_tensors(tmp_path: Path, class_folders: ClassFolders) -> None:
    written = class_folders(tmp_path, {"cat": 2, "dog": 3})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0")
    data = ImageFolder(tmp_path)
    assert data.classes == ["cat", "dog"]
    assert len(data) == 5 and data.targets == [0, 0, 1, 1, 1]
    image, label = data[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 8) and label == 1
    assert torch.equal(image, torch.from_numpy(written["dog"][1]).permute(2, 0, 1))
    x, y = data.tensors()
    assert x.shape == (5, 3, 6, 8) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 1, 1, 1] and y.dtype == torch.int64
    assert torch.equal(x[3], image)


def test_cache_keeps_decoded_images(tmp_path: Path, class_folders: ClassFolders) -> None:
    class_folders(tmp_path, {"a": 2, "b": 2})
    cached = ImageFolder(tmp_path, cache=True)
    uncached = ImageFolder(tmp_path, cache=False)
    first = cached[0][0]
    first[:] = 0  # items are copies: changing one must not change the cache
    (tmp_path / "a" / "0.png").unlink()
    assert cached[0][0].sum() > 0
    assert cached.tensors()[0].shape[0] == 4
    with pytest.raises(DataError, match="does not exist"):
        uncached[0]


def test_given_classes_set_label_order(tmp_path: Path, class_folders: ClassFolders) -> None:
    class_folders(tmp_path, {"other": 1, "0": 1, "9": 1})
    data = ImageFolder(tmp_path, classes=["9", "0", "other"])
    assert data.classes == ["9", "0", "other"]
    labels = {Path(p).parent.name: t for p, t in data.samples}
    assert labels == {"9": 0, "0": 1, "other": 2}


def test_unknown_and_missing_class_folders(tmp_path: Path, class_folders: ClassFolders) -> None:
    class_folders(tmp_path, {"0": 1, "1": 1, "cow": 1})
    with pytest.raises(DataError, match="not classes of the task: 'cow'"):
        ImageFolder(tmp_path, classes=["0", "1"])
    with pytest.raises(DataError, match="no folder for classes '2'"):
        ImageFolder(tmp_path, classes=["0", "1", "2", "cow"])
    data = ImageFolder(tmp_path, classes=["0", "1", "2", "cow"], allow_empty=True)
    assert sorted(set(data.targets)) == [0, 1, 3]


def test_index_folders_map_to_class_names(tmp_path: Path, class_folders: ClassFolders) -> None:
    class_folders(tmp_path, {"0": 2, "1": 1})  # the original NoScope layout
    data = ImageFolder(tmp_path, classes=["no_person", "person"])
    assert data.targets == [0, 0, 1]


def test_empty_class_folder(tmp_path: Path, class_folders: ClassFolders) -> None:
    class_folders(tmp_path, {"a": 1})
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"without images.*'b'"):
        ImageFolder(tmp_path)
    assert len(ImageFolder(tmp_path, allow_empty=True)) == 1


def test_corrupt_image_names_the_file(tmp_path: Path, class_folders: ClassFolders) -> None:
    class_folders(tmp_path, {"a": 2})
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "1.png").write_bytes(good[: len(good) // 2])
    data = ImageFolder(tmp_path)
    assert data[0][1] == 0
    with pytest.raises(DataError, match=r"cannot decode image .*1\.png"):
        data[1]
    (tmp_path / "a" / "1.png").unlink()
    (tmp_path / "a" / "2.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match=r"2\.png"):
        ImageFolder(tmp_path).tensors()


def test_wrong_size_is_an_error_unless_size_given(tmp_path: Path, class_folders: ClassFolders) -> None:
    class_folders(tmp_path, {"a": 2}, size=(6, 8))
    big = np.arange(12 * 16 * 3, dtype=np.uint8).reshape(12, 16, 3)
    write_png(tmp_path / "a" / "9.png", big)
    with pytest.raises(DataError, match=r"9\.png is 12x16 but the others are 6x8"):
        ImageFolder(tmp_path).tensors()
    x, _ = ImageFolder(tmp_path, size=(6, 8)).tensors()
    assert x.shape == (3, 3, 6, 8)
    assert torch.equal(x[2], torch.from_numpy(big[::2, ::2]).permute(2, 0, 1))


def test_read_image_converts_modes(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 7, np.uint8), mode="L").save(tmp_path / "g.png")
    Image.new("RGBA", (5, 4), (1, 2, 3, 4)).save(tmp_path / "a.png")
    assert read_image(tmp_path / "g.png").shape == (4, 5, 3)
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.png")


def test_resize_nearest_follows_opencv_rule() -> None:
    image = np.arange(10)[None, :, None].repeat(2, axis=0)
    assert resize_nearest(image, (2, 4))[0, :, 0].tolist() == [0, 2, 5, 7]  # floor(i * 10 / 4)
    assert resize_nearest(image, (2, 10)) is image


def test_atomic_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.png").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "done").write_text("1")
    assert (target / "done").read_text() == "1"
    with pytest.raises(DataError, match=r"already exists.*--overwrite"), atomic_directory(target):
        pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
