"""CIFAR readers on fake archives written in the real format (Python 2 protocol-2 pickles in a tar.gz)."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from foldedcnns.data.cifar import load_cifar, safe_unpickle
from foldedcnns.errors import ConfigError, DataError

PER_BATCH = 4


def py2_pickle(obj: object) -> bytes:
    """A protocol-2 pickle as Python 2's cPickle wrote the CIFAR batches: str as BINSTRING, numpy.core names."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b)

    def integer(i: int) -> None:
        out.extend(b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i))

    def write(o: object) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                write(key)
                write(value)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for value in o:
                write(value)
            out.extend(b"e")
        elif isinstance(o, bytes):
            string(o)
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, np.ndarray):
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01(")
            for dim in o.shape:
                integer(dim)
            out.extend(b"tcnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    write(obj)
    out.extend(b".")
    return bytes(out)


def batch(first: int, count: int, label_key: bytes, num_classes: int) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(first)
    data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(first, first + count)  # first red pixel = global image index
    labels = [(first + i) % num_classes for i in range(count)]
    payload = {b"batch_label": b"fake", label_key: labels, b"data": data,
               b"filenames": [f"img_{first + i}.png".encode() for i in range(count)]}
    return py2_pickle(payload), data, labels


def write_fake(root: Path, name: str = "cifar10", archive: bool = True) -> Path:
    """A fake CIFAR archive (or extracted folder) with PER_BATCH images per batch file."""
    if name == "cifar10":
        folder, files = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        meta = py2_pickle({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": PER_BATCH})
        meta_name, label_key, classes, tar_name = "batches.meta", b"labels", 10, "cifar-10-python.tar.gz"
    else:
        folder, files = "cifar-100-python", ["train", "test"]
        meta = py2_pickle({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
        meta_name, label_key, classes, tar_name = "meta", b"fine_labels", 100, "cifar-100-python.tar.gz"
    contents = {f"{folder}/{meta_name}": meta, f"{folder}/readme.html": b"<html/>"}
    for i, file in enumerate(files):
        contents[f"{folder}/{file}"] = batch(i * PER_BATCH, PER_BATCH, label_key, classes)[0]
    root.mkdir(parents=True, exist_ok=True)
    if not archive:
        for member, data in contents.items():
            (root / member).parent.mkdir(parents=True, exist_ok=True)
            (root / member).write_bytes(data)
        return root / folder
    path = root / tar_name
    with tarfile.open(path, "w:gz") as tar:
        for member, data in contents.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_cifar10_from_archive_train_and_test(tmp_path: Path) -> None:
    archive = write_fake(tmp_path)
    x, y, names = load_cifar(archive, "cifar10", train=True)
    assert x.shape == (5 * PER_BATCH, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == [i % 10 for i in range(5 * PER_BATCH)]
    assert names == [f"c{i}" for i in range(10)]
    assert x[:, 0, 0, 0].tolist() == list(range(5 * PER_BATCH))  # batches in order, R plane first
    _, data, _ = batch(0, PER_BATCH, b"labels", 10)
    assert torch.equal(x[1], torch.from_numpy(data[1].reshape(3, 32, 32)))
    xt, _, _ = load_cifar(archive, "cifar10", train=False)
    assert xt.shape[0] == PER_BATCH and xt[0, 0, 0, 0] == 5 * PER_BATCH


@pytest.mark.parametrize("where", ["archive", "archive_dir", "folder", "folder_parent"])
def test_cifar_path_forms_agree(tmp_path: Path, where: str) -> None:
    reference = load_cifar(write_fake(tmp_path / "a"), "cifar10")[0]
    if where == "archive":
        path = tmp_path / "a" / "cifar-10-python.tar.gz"
    elif where == "archive_dir":
        path = tmp_path / "a"
    elif where == "folder":
        path = write_fake(tmp_path / "b", archive=False)
    else:
        write_fake(tmp_path / "b", archive=False)
        path = tmp_path / "b"
    assert torch.equal(load_cifar(path, "cifar10")[0], reference)


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    archive = write_fake(tmp_path, "cifar100")
    x, y, names = load_cifar(tmp_path, "cifar100", train=True)
    assert x.shape == (PER_BATCH, 3, 32, 32)
    assert y.tolist() == list(range(PER_BATCH))
    assert len(names) == 100 and names[3] == "f3"
    assert load_cifar(archive, "cifar-100", train=False)[1].tolist() == [PER_BATCH + i for i in range(PER_BATCH)]


def test_missing_archive_names_file_and_place(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 not found .*put cifar-10-python\.tar\.gz .* in " + str(tmp_path)):
        load_cifar(tmp_path, "cifar10")
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz .*cifar-100-python/"):
        load_cifar(tmp_path / "nowhere", "cifar100")
    with pytest.raises(ConfigError, match="unknown CIFAR variant"):
        load_cifar(tmp_path, "cifar11")


def test_corrupt_and_incomplete_archives(tmp_path: Path) -> None:
    archive = write_fake(tmp_path)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable CIFAR-10 archive"):
        load_cifar(archive)
    folder = write_fake(tmp_path / "x", archive=False)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        load_cifar(folder)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_3 is not a valid CIFAR batch"):
        load_cifar(folder)


def test_unpickling_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = b"\x80\x02cos\nsystem\nU" + bytes([len(f"touch {marker}")]) + f"touch {marker}".encode() + b"\x85R."
    with pytest.raises(DataError, match=r"refusing to load global os\.system"):
        safe_unpickle(evil, "evil")
    assert not marker.exists()
    # a Python 3 re-pickle of a batch still loads
    py3 = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [1]}, protocol=4)
    assert safe_unpickle(py3, "py3")[b"labels"] == [1]
