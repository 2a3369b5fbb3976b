"""A real-image data set for offline checks: scikit-learn's handwritten digits as an image folder.

    .venv/bin/python benchmarks/real_digits.py OUT_DIR [--size 24] [--seed 0] [--overwrite]

``sklearn.datasets.load_digits`` ships inside the scikit-learn wheel (no download): 1,797 grey 8x8
scans of handwritten digits (UCI "Optical Recognition of Handwritten Digits", 0..16 ink levels), 10
classes. This project did not generate them. The script writes

* ``OUT_DIR/data/{train,val,test}/<digit>/<index>.png``: each scan upscaled to ``--size`` x ``--size``
  (bilinear, default 24) and stored as RGB; a seeded, per-class stratified split of 2/3 train, 1/6
  validation and 1/6 test (1,198 / 299 / 300 images at the default seed);
* ``OUT_DIR/digits.json``: a model description in the original release's exact format (nested
  ``"params"``, no ``name`` or ``family``: the file name names the task), template ``1_3s_1_convnet``
  with the original's numbers.

It prints the split sizes and the train command. Needs scikit-learn (``pip install -e .[dev]``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = (("train", 4), ("val", 1), ("test", 1))  # shares of 6 per class
INK_LEVELS = 16  # load_digits pixels are 0..16
MAX_SIZE = 512


def digits_description(size: int) -> dict[str, object]:
    """The description of the digits task in the original release's format (nested ``params``)."""
    return {"out-h": size, "out-w": size,
            "model-architecture": {"template": "1_3s_1_convnet",
                                   "params": {"n-conv-units": 1, "pool1_stride": 1, "conv1_n_feature_maps": 32,
                                              "convi_n_feature_maps": 32, "convn_n_feature_maps": 8}},
            "ClassNames": [str(d) for d in range(10)]}


def split_indices(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per class: shuffle with ``seed`` and cut 4/6 train, 1/6 val, the rest test."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name, _ in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = len(members)
        n_train, n_val = round(n * 4 / 6), round(n / 6)
        out["train"] += members[:n_train].tolist()
        out["val"] += members[n_train:n_train + n_val].tolist()
        out["test"] += members[n_train + n_val:].tolist()
    return {name: np.sort(np.asarray(idx)) for name, idx in out.items()}


def to_rgb(image: np.ndarray, size: int) -> Image.Image:
    """One 8x8 scan (0..16) as a ``size`` x ``size`` RGB image (bilinear upscaling)."""
    grey = Image.fromarray(np.clip(image * (255.0 / INK_LEVELS), 0, 255).astype(np.uint8), mode="L")
    return grey.resize((size, size), Image.BILINEAR).convert("RGB")


def write_digits(out: Path, size: int = 24, seed: int = 0, overwrite: bool = False) -> dict[str, int]:
    """Write the image folder and the description under ``out``; returns the image count per split."""
    try:
        from sklearn.datasets import load_digits  # optional dependency of this script only
    except ImportError as exc:
        raise SystemExit("real_digits.py needs scikit-learn: .venv/bin/pip install -e '.[dev]'") from exc
    if not 8 <= size <= MAX_SIZE:
        raise SystemExit(f"--size must be in 8..{MAX_SIZE}, got {size}")
    data_dir = out / "data"
    if data_dir.exists():
        if not overwrite:
            raise SystemExit(f"{data_dir} exists; pass --overwrite to replace it")
        shutil.rmtree(data_dir)
    digits = load_digits()
    images, labels = digits.images, digits.target
    counts = {}
    for split, indices in split_indices(labels, seed).items():
        for index in indices:
            folder = data_dir / split / str(int(labels[index]))
            folder.mkdir(parents=True, exist_ok=True)
            to_rgb(images[index], size).save(folder / f"{int(index)}.png")
        counts[split] = len(indices)
    (out / "digits.json").write_text(json.dumps(digits_description(size), indent=1) + "\n", encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", metavar="OUT_DIR", type=Path)
    parser.add_argument("--size", type=int, default=24, help="side of the written images (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR/data if it exists")
    args = parser.parse_args(argv)
    counts = write_digits(args.out, args.size, args.seed, args.overwrite)
    print(", ".join(f"{split} {n}" for split, n in counts.items()), f"images of {args.size}x{args.size} "
          f"in {args.out / 'data'}; description {args.out / 'digits.json'}")
    print(f"train: foldedcnns train --description {args.out / 'digits.json'} --data {args.out / 'data'} "
          "--fold 4 --epochs 100 --out RUN_DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
