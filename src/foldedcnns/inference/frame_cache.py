"""A decode-once cache of model inputs: a folder that ``predict`` and ``scrape`` read at the model's speed.

Decoding costs 5-35x the model; when the same video is classified many times (another checkpoint,
another precision, a threshold sweep), ``foldedcnns data cache`` decodes it once and stores what each
task's model reads. The folder holds::

    cache.json        format, the video, its fingerprint, frame count, one entry per task (size, crop, file)
    frames.npy        (N,) int64 frame indices
    <task>.u8         (N, H, W, 3) uint8 views of the task, raw, memory-mapped when read

A cache is refused in one line when its video is gone or has changed (the fingerprint of
:func:`~foldedcnns.data.video_segments.index_video`: size, packet timestamps, first and last MiB), when
no task in it has the crop and input size asked for, or when a file's size disagrees with cache.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foldedcnns.data.crop import Crop
from foldedcnns.data.model_input import RGB_CHANNELS
from foldedcnns.data.video_segments import index_video
from foldedcnns.errors import DataError
from foldedcnns.utils.atomic import atomic_write_text

CACHE = "cache"  # the Source kind of a cache folder
CACHE_FORMAT = 1
MANIFEST = "cache.json"
FRAMES_FILE = "frames.npy"
VIEW_SUFFIX = ".u8"


def is_cache_dir(path: str | Path) -> bool:
    """True for a folder written by ``foldedcnns data cache``."""
    return (Path(path) / MANIFEST).is_file()


def _spec_key(size: Sequence[int], crop: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    return tuple(int(v) for v in size), None if crop is None else tuple(int(v) for v in crop)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """cache.json of ``folder``, checked for its format."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read cache {folder} ({exc}); rebuild it with foldedcnns data cache") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT or not isinstance(
            manifest.get("tasks"), dict):
        raise DataError(f"{folder / MANIFEST} is not a foldedcnns cache of format {CACHE_FORMAT}; rebuild it with "
                        "foldedcnns data cache")
    return manifest


def check_fresh(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuse a cache whose video is gone or no longer the one it was made from."""
    video = Path(str(manifest.get("video", "")))
    if not video.is_file():
        raise DataError(f"the video of cache {folder} ({video}) no longer exists; a cache is checked against its "
                        "video, rebuild it with foldedcnns data cache")
    if index_video(video).fingerprint != manifest.get("fingerprint"):
        raise DataError(f"cache {folder} is stale: {video} changed since it was made (fingerprint differs); rebuild "
                        "it with foldedcnns data cache")


def read_cache_views(folder: str | Path, views: Sequence[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frame indices (N,) and one memory-mapped ``(N, H, W, 3)`` uint8 array per view (objects with ``size``
    and ``crop``), each from the cached task with that crop and size; see the module docstring."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_fresh(folder, manifest)
    frames = int(manifest["frames"])
    indices = np.load(folder / FRAMES_FILE, allow_pickle=False)
    if indices.shape != (frames,):
        raise DataError(f"cache {folder}: {FRAMES_FILE} holds {indices.shape} indices, cache.json says {frames}; "
                        "rebuild it with foldedcnns data cache")
    by_spec = {_spec_key(t["size"], t["crop"]): (name, t) for name, t in manifest["tasks"].items()}
    arrays = []
    for view in views:
        crop = None if view.crop is None else tuple(view.crop)
        found = by_spec.get(_spec_key(view.size, crop))
        if found is None:
            have = "; ".join(f"{n}: crop {t['crop']} size {t['size']}" for n, t in manifest["tasks"].items())
            raise DataError(f"cache {folder} holds no task with crop {crop} and input size {tuple(view.size)} "
                            f"(it has {have}); cache this task with foldedcnns data cache")
        name, task = found
        path = folder / str(task["file"])
        shape = (frames, *(int(v) for v in task["size"]), RGB_CHANNELS)
        if Path(task["file"]).name != task["file"] or not path.is_file() or path.stat().st_size != int(np.prod(shape)):
            raise DataError(f"cache {folder}: {task['file']} of task {name} is missing or not {shape} uint8; rebuild "
                            "it with foldedcnns data cache")
        arrays.append(np.memmap(path, dtype=np.uint8, mode="r", shape=shape))
    return indices, arrays


def write_cache(folder: str | Path, video: str | Path, tasks: Mapping[str, Any],
                frames: Iterable[tuple[int, list[np.ndarray]]]) -> int:
    """Store ``frames`` (``(index, [one view per task])``, tasks in ``tasks``' order, each with ``size`` and
    ``crop``) of ``video`` in ``folder`` (new or empty); returns the frame count. The manifest is written
    last, so an interrupted cache is never read as complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise DataError(f"cache folder {folder} is not empty; pass a new folder (or remove it)")
    names = list(tasks)
    files = [folder / f"{name}{VIEW_SUFFIX}" for name in names] + [folder / FRAMES_FILE]
    handles = [open(path, "wb") for path in files[:-1]]  # noqa: SIM115 (closed below)
    indices: list[int] = []
    try:
        try:
            for index, views in frames:
                indices.append(int(index))
                for handle, view in zip(handles, views, strict=True):
                    handle.write(np.ascontiguousarray(view, dtype=np.uint8).tobytes())
        finally:
            for handle in handles:
                handle.close()
        np.save(files[-1], np.asarray(indices, dtype=np.int64))
        video_index = index_video(video)
    except BaseException:  # a fault or a signal: remove what this call wrote, never a file it found
        for path in files:
            path.unlink(missing_ok=True)
        raise
    manifest = {"format": CACHE_FORMAT, "video": str(Path(video).resolve()), "fingerprint": video_index.fingerprint,
                "frames": len(indices), "width": video_index.width, "height": video_index.height,
                "tasks": {name: {"size": list(tasks[name].size),
                                 "crop": None if tasks[name].crop is None else list(Crop.parse(tasks[name].crop)),
                                 "file": f"{name}{VIEW_SUFFIX}"} for name in names}}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return len(indices)
