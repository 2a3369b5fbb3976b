"""Drawing data sets: :func:`render_batch` in memory, :func:`generate_synthetic` as an image folder on disk.

The writer draws one class per worker process; class ``k`` always draws from the random stream
``(seed, k)``, so the output does not depend on the number of workers or on scheduling.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from foldedcnns.data.imageio import write_png
from foldedcnns.data.synth.layouts import game_spec, layout_for
from foldedcnns.data.synth.render import render_scene
from foldedcnns.errors import ConfigError
from foldedcnns.models.spec import TaskSpec
from foldedcnns.utils.atomic import atomic_directory

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
MANIFEST = "synth.json"
DEFAULT_WORKERS = 2  # processes drawing classes in parallel


def render_batch(task: str | os.PathLike[str] | TaskSpec, labels: Sequence[int],
                 rng: np.random.Generator | int) -> np.ndarray:
    """Draw one crop per label (class index) of a game task: ``(N, H, W, 3)`` RGB ``uint8``."""
    spec = game_spec(task)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    layout = layout_for(spec)
    out = np.empty((len(labels), spec.height, spec.width, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        label = int(label)
        if not 0 <= label < spec.num_classes:
            raise ConfigError(f"label {label} is not a class of {spec.name} (0..{spec.num_classes - 1})")
        out[i] = render_scene(layout(spec.class_names[label], rng), spec.height, spec.width, rng)
    return out


def split_counts(per_class: int, splits: Sequence[float]) -> dict[str, int]:
    """Images per class in train, val and test; every split gets at least one."""
    if len(splits) != len(SPLITS) or any(f <= 0 for f in splits) or abs(sum(splits) - 1) > 1e-6:
        raise ConfigError(f"splits must be three positive fractions summing to 1 (train, val, test), got {splits}")
    if per_class < len(SPLITS):
        raise ConfigError(f"per-class count must be at least {len(SPLITS)} (one image per split), got {per_class}")
    val = max(1, round(per_class * splits[1]))
    test = max(1, round(per_class * splits[2]))
    return {"train": per_class - val - test, "val": val, "test": test}


def _draw_class(spec: TaskSpec, k: int, seed: int, counts: dict[str, int], root: Path) -> int:
    """Draw and write every image of class ``k`` (runs in a worker process); return how many."""
    name = spec.class_names[k]
    layout = layout_for(spec)
    rng = np.random.default_rng([seed, k])
    for split in SPLITS:
        folder = root / split / name
        folder.mkdir(parents=True)
        for n in range(counts[split]):
            write_png(folder / f"{n}.png", render_scene(layout(name, rng), spec.height, spec.width, rng))
    return sum(counts.values())


def _process_pool(workers: int) -> ProcessPoolExecutor:
    # fork: workers inherit the imported modules (torch included) and the registered layouts
    # instead of importing them again
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def generate_synthetic(task: str | os.PathLike[str] | TaskSpec, out_dir: str | os.PathLike[str], *,
                       per_class: int = 200, seed: int = 0,
                       splits: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, overwrite: bool = False,
                       workers: int | None = None, progress: bool = False) -> dict[str, int]:
    """Write ``OUT/{train,val,test}/<class>/<n>.png`` for a game task; return the image count per split.

    ``per_class`` images are drawn per class and split by ``splits``. Class ``k`` is drawn from the
    random stream ``(seed, k)``, so the output is the same for a seed on every machine, whatever the
    number of ``workers`` (processes; default: up to 2), and a class's images do not depend on the
    others. ``OUT`` appears only when complete, with ``synth.json`` describing it.
    """
    spec = game_spec(task)
    counts = split_counts(per_class, splits)
    workers = workers or min(DEFAULT_WORKERS, os.cpu_count() or 1)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp, \
            tqdm(total=per_class * spec.num_classes, desc=f"drawing {spec.name}", unit="img",
                 disable=not progress, mininterval=0.5) as bar:
        if workers == 1:
            for k in range(spec.num_classes):
                bar.update(_draw_class(spec, k, seed, counts, tmp))
        else:
            with _process_pool(workers) as pool:
                jobs = [pool.submit(_draw_class, spec, k, seed, counts, tmp) for k in range(spec.num_classes)]
                for job in as_completed(jobs):
                    bar.update(job.result())
        totals = {split: counts[split] * spec.num_classes for split in SPLITS}
        manifest = {"task": spec.name, "seed": seed, "per_class": per_class, "splits": list(splits),
                    "counts": totals, "classes": list(spec.class_names), "size": [spec.height, spec.width]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return totals
