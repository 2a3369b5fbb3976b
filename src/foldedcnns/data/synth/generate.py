"""Drawing data sets: :func:`render_batch` in memory, :func:`generate_synthetic` as an image folder on disk.

The writer draws one class per worker process; class ``k`` always draws from the random stream
``(seed, k)``, so the output does not depend on the number of workers or on scheduling.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
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
from foldedcnns.utils.signals import terminate_pool, worker_init

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
MANIFEST = "synth.json"
DEFAULT_WORKERS = 2  # processes drawing classes in parallel
MAX_SEED = 2**63


def render_batch(task: str | os.PathLike[str] | TaskSpec, labels: Sequence[int],
                 rng: np.random.Generator | int) -> np.ndarray:
    """Draw one crop per label (class index) of a game task: ``(N, H, W, 3)`` RGB ``uint8``."""
    spec = game_spec(task)
    rng = np.random.default_rng(check_seed(rng)) if not isinstance(rng, np.random.Generator) else rng
    layout = layout_for(spec)
    out = np.empty((len(labels), spec.height, spec.width, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        label = int(label)
        if not 0 <= label < spec.num_classes:
            raise ConfigError(f"label {label} is not a class of {spec.name} (0..{spec.num_classes - 1})")
        out[i] = render_scene(layout(spec.class_names[label], rng), spec.height, spec.width, rng)
    return out


def check_seed(seed: object) -> int:
    """A seed of the random streams: an integer from 0 to 2**63 - 1 (NumPy refuses negative seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"--seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return seed


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


def _draw_job(job: tuple[TaskSpec, int, int, dict[str, int], Path]) -> int:
    return _draw_class(*job)


def _draw_in_pool(jobs: list[tuple[TaskSpec, int, int, dict[str, int], Path]], workers: int) -> Iterator[int]:
    """Run :func:`_draw_class` on ``workers`` processes, yielding each class's count as it finishes.

    On any exception (a worker's fault, Ctrl-C, SIGTERM) the workers are terminated and joined before
    it propagates, so none outlives the call or writes into a folder being removed. Workers ignore
    SIGINT and die with their parent (:func:`foldedcnns.utils.signals.worker_init`).
    """
    # fork: workers inherit the imported modules (torch included) and the registered layouts
    # instead of importing them again
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=worker_init,
                               initargs=(os.getpid(),))
    try:
        for future in as_completed([pool.submit(_draw_job, job) for job in jobs]):
            yield future.result()
    except BaseException:
        terminate_pool(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
    check_seed(seed)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}")
    # more processes than classes would idle: each draws one class
    workers = min(workers or min(DEFAULT_WORKERS, os.cpu_count() or 1), spec.num_classes)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp, \
            tqdm(total=per_class * spec.num_classes, desc=f"drawing {spec.name}", unit="img",
                 disable=not progress, mininterval=0.5) as bar:
        jobs = [(spec, k, seed, counts, tmp) for k in range(spec.num_classes)]
        drawn = map(_draw_job, jobs) if workers == 1 else _draw_in_pool(jobs, workers)
        for count in drawn:
            bar.update(count)
        totals = {split: counts[split] * spec.num_classes for split in SPLITS}
        manifest = {"task": spec.name, "seed": seed, "per_class": per_class, "splits": list(splits),
                    "counts": totals, "classes": list(spec.class_names), "size": [spec.height, spec.width]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return totals
