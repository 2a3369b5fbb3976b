"""NoScope video data: frame extraction, per-frame labels, contiguous train/val/test splits.

A NoScope task asks "is object X in this frame?" of a fixed-camera video. Labels come from the
NoScope detection CSV (columns ``frame``, ``object_name``, ...): a frame is class 1 when some row for
it names the object, else class 0; the frame count is the largest frame number plus one. The video
is cut into K = 1/fraction contiguous chunks of ``int(total * fraction)`` frames; chunks
``start_split``, ``start_split + 1`` and ``start_split + 2`` are train, val and test (the original
``noscope_split.py``). Two ways to get the data:

* files, as the original: :func:`extract_frames` writes ``<frame index>.png`` for every frame, then
  :func:`split_frames` fills ``OUT/{train,val,test}/{0,1}/<frame>.png`` (about 100 GB for all videos);
* streaming: :func:`load_video_split` decodes a video straight into labelled ``uint8`` tensors (and
  can cache them as one ``.npz`` per split), :class:`NoScopeVideoDataset` streams one split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from tqdm import tqdm

from foldedcnns.data.crop import Crop
from foldedcnns.data.imageio import check_size, write_png
from foldedcnns.data.noscope_labels import label_frames
from foldedcnns.data.video import iter_frames
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.models import get_task
from foldedcnns.models.spec import TaskSpec
from foldedcnns.utils.atomic import atomic_directory, atomic_path, atomic_write_text
from foldedcnns.utils.signals import cancel_on_error

SPLITS: tuple[str, ...] = ("train", "val", "test")
FRAME_SIZE = 50  # NoScope CNN input: 50x50, aspect ratio not kept
WRITE_THREADS = 2  # PNG encoding releases the GIL, so it overlaps with decoding
MAX_PENDING_WRITES = 256
MANIFEST = "noscope_split.json"
NOSCOPE_PREFIX = "noscope/"


@dataclass(frozen=True)
class SplitParams:
    """How one NoScope video is labelled and cut: the object, the chunk fraction, the first chunk."""

    object_name: str
    fraction: tuple[int, int] = (1, 8)
    start_split: int = 0

    def __post_init__(self) -> None:
        if not self.object_name:
            raise ConfigError("NoScope split needs an object name, e.g. --object person")
        num, den = self.fraction
        if num < 1 or den < num or den % num:
            raise ConfigError(f"fraction must be 1/K with K >= 3 (e.g. 1/8), got {num}/{den}")
        if not 0 <= self.start_split <= self.num_chunks - len(SPLITS):
            raise ConfigError(f"start split {self.start_split} leaves no room for train, val and test in "
                              f"{self.num_chunks} chunks; use 0..{self.num_chunks - len(SPLITS)}")

    @property
    def num_chunks(self) -> int:
        return self.fraction[1] // self.fraction[0]

    def ranges(self, total_frames: int) -> dict[str, range]:
        """Frame ranges of train, val and test for a video of ``total_frames`` frames."""
        chunk = int(total_frames * Fraction(*self.fraction))
        if chunk < 1:
            raise DataError(f"{total_frames} frames are too few for chunks of "
                            f"{self.fraction[0]}/{self.fraction[1]}; use a longer video or a larger fraction")
        return {name: range((self.start_split + k) * chunk, (self.start_split + k + 1) * chunk)
                for k, name in enumerate(SPLITS)}


def parse_fraction(text: str | Sequence[int]) -> tuple[int, int]:
    """``"1/8"`` or ``[1, 8]`` -> ``(1, 8)``."""
    try:
        if isinstance(text, str):
            num, den = text.split("/") if "/" in text else ("1", text)
            return int(num), int(den)
        num, den = text
        return int(num), int(den)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"fraction must look like 1/8, got {text!r}") from exc


def split_params(config: str | os.PathLike[str] | TaskSpec | SplitParams | Mapping[str, Any] | None = None, *,
                 object_name: str | None = None, fraction: str | Sequence[int] | None = None,
                 start_split: int | None = None) -> SplitParams:
    """Resolve a NoScope split configuration; keyword values override the configuration's.

    ``config`` is a config name (``coral``, ``night``, ``taipei``, ``roundabout``, or ``noscope/<name>``),
    a task description (JSON path or :class:`TaskSpec`) with an ``extra["noscope"]`` entry, a mapping
    ``{"object", "fraction", "start_split"}``, or ``None`` / ``"custom"`` for a video of your own
    (then ``object_name`` is required; fraction defaults to 1/8 and start to 0).
    """
    base: dict[str, Any] = {}
    if isinstance(config, SplitParams):
        base = asdict(config)
    elif isinstance(config, Mapping):
        base = _from_mapping(config, "the split configuration")
    elif config is not None and str(config) != "custom":
        base = _from_task(config)
    if object_name is not None:
        base["object_name"] = object_name
    if fraction is not None:
        base["fraction"] = parse_fraction(fraction)
    if start_split is not None:
        base["start_split"] = int(start_split)
    if "object_name" not in base:
        raise ConfigError("a custom NoScope split needs the object to look for (--object NAME)")
    return SplitParams(**base)


def _from_mapping(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    if "object" not in data and "object_name" not in data:
        raise ConfigError(f"{where} lacks 'object'; expected {{'object', 'fraction', 'start_split'}}")
    return {"object_name": str(data.get("object", data.get("object_name"))),
            "fraction": parse_fraction(data.get("fraction", (1, 8))),
            "start_split": int(data.get("start_split", 0))}


def _from_task(config: str | os.PathLike[str] | TaskSpec) -> dict[str, Any]:
    name = config if isinstance(config, TaskSpec) else str(config)
    if isinstance(name, str) and "/" not in name and not name.endswith(".json") and not Path(name).is_file():
        name = NOSCOPE_PREFIX + name
    spec = get_task(name)
    entry = spec.extra.get("noscope")
    if not isinstance(entry, Mapping):
        raise ConfigError(f"task {spec.name} has no 'noscope' split settings; use a NoScope config "
                          "(coral, night, taipei, roundabout) or give --object, --fraction and --start-split")
    return _from_mapping(entry, f"task {spec.name}")


# ---------------------------------------------------------------------------------------------- labels
# label_frames (re-exported here) reads the NoScope CSV: foldedcnns.data.noscope_labels

def split_stats(labels: np.ndarray, params: SplitParams) -> dict[str, dict[str, Any]]:
    """Frames, positives and positive fraction of each split (what ``--print-stats`` shows)."""
    out = {}
    for name, frames in params.ranges(len(labels)).items():
        positive = int(labels[frames.start:frames.stop].sum())
        out[name] = {"first_frame": frames.start, "last_frame": frames.stop - 1, "frames": len(frames),
                     "positive": positive, "positive_fraction": positive / len(frames)}
    return out


# ---------------------------------------------------------------------------------------------- files


def extract_frames(video: str | os.PathLike[str], out_dir: str | os.PathLike[str], size: int | tuple[int, int] = 50,
                   start: int = 0, end: int | None = None, *, crop: Crop | None = None, overwrite: bool = False,
                   progress: bool = True) -> int:
    """Decode every frame of ``video`` in order and write ``OUT_DIR/<frame index>.png``; return the count.

    Frames are resized to ``size`` (nearest neighbour, as the original) and named by their true index
    in the video, also when ``start`` > 0. ``end`` is exclusive. The folder appears at ``out_dir``
    only once every frame is written; a decode fault leaves nothing behind and raises
    :class:`DataError`.
    """
    size = check_size(size)
    count = 0
    with atomic_directory(out_dir, overwrite=overwrite) as tmp, \
            cancel_on_error(ThreadPoolExecutor(max_workers=WRITE_THREADS)) as pool:
        frames = iter_frames(video, size=size, start=start, end=end, crop=crop)
        pending: deque[Future[None]] = deque()
        bar = tqdm(frames, desc=f"frames of {Path(video).name}", unit="frame", disable=not progress,
                   mininterval=0.5)
        for index, rgb in bar:  # the bar has no total: header frame counts are not trusted
            pending.append(pool.submit(write_png, tmp / f"{index}.png", rgb))
            count += 1
            if len(pending) >= MAX_PENDING_WRITES:
                pending.popleft().result()
        for future in pending:
            future.result()
    return count


def split_frames(labels_csv: str | os.PathLike[str], frames_dir: str | os.PathLike[str],
                 out_dir: str | os.PathLike[str], params: SplitParams, *, overwrite: bool = False,
                 link: bool = True, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Sort extracted frames into ``OUT_DIR/{train,val,test}/{0,1}/<frame>.png``; return per-split stats.

    ``frames_dir`` holds ``<frame index>.png`` (from :func:`extract_frames`). Files are hard-linked
    when possible (same file system; saves the disk space of a copy), else copied. Every needed frame
    is checked before anything is written; ``OUT_DIR`` appears only when complete and also gets
    ``noscope_split.json`` with the settings and statistics.
    """
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise DataError(f"frames folder {frames_dir} does not exist; extract it with "
                        "'foldedcnns data noscope-frames VIDEO DIR'")
    labels = label_frames(labels_csv, params.object_name)
    ranges = params.ranges(len(labels))
    stats = split_stats(labels, params)
    needed = [(name, i) for name, frames in ranges.items() for i in frames]
    missing = [i for _, i in needed if not (frames_dir / f"{i}.png").is_file()]
    if missing:
        raise DataError(f"{frames_dir} lacks {len(missing)} of the {len(needed)} frames the split needs "
                        f"(first missing: {missing[0]}.png); extract the whole video (or frames "
                        f"{needed[0][1]}..{needed[-1][1]}) with 'foldedcnns data noscope-frames'")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for name in SPLITS:
            for label in (0, 1):
                (tmp / name / str(label)).mkdir(parents=True)
        use_link = link
        for name, i in tqdm(needed, desc="splitting frames", unit="frame", disable=not progress, mininterval=0.5):
            source, target = frames_dir / f"{i}.png", tmp / name / str(int(labels[i])) / f"{i}.png"
            if use_link:
                try:
                    os.link(source, target)
                    continue
                except OSError:
                    use_link = False  # another file system, or links not allowed: copy from now on
            shutil.copyfile(source, target)
        manifest = {"object": params.object_name, "fraction": list(params.fraction),
                    "start_split": params.start_split, "total_frames": len(labels), "splits": stats}
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return stats


# ---------------------------------------------------------------------------------------------- streaming


def _cache_file(cache_dir: Path, video: Path, csv_path: Path, params: SplitParams, size: tuple[int, int],
                split: str) -> Path:
    key = json.dumps([str(video.resolve()), video.stat().st_size, video.stat().st_mtime_ns,
                      str(csv_path.resolve()), csv_path.stat().st_mtime_ns, asdict(params), size])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{video.stem}-{split}-{size[0]}x{size[1]}-{digest}.npz"


def load_video_splits(video: str | os.PathLike[str], labels_csv: str | os.PathLike[str],
                      config: str | TaskSpec | SplitParams | Mapping[str, Any], splits: Sequence[str] = SPLITS, *,
                      size: int | tuple[int, int] = FRAME_SIZE, cache_dir: str | os.PathLike[str] | None = None,
                      progress: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Decode ``video`` once into labelled tensors for each of ``splits``, without writing PNG files.

    Returns ``{split: (uint8 (N, 3, H, W), int64 (N,))}`` in frame order. With ``cache_dir`` each split
    is stored as an ``.npz`` keyed by the video, the CSV, the settings and the size, and read from
    there next time. A video shorter than the CSV says is a :class:`DataError`.
    """
    video, csv_path = Path(video), Path(labels_csv)
    params = config if isinstance(config, SplitParams) else split_params(config)
    size = check_size(size) or (FRAME_SIZE, FRAME_SIZE)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ConfigError(f"unknown split {unknown[0] if unknown else ''!r}; use {', '.join(SPLITS)}")
    if not video.is_file():
        raise DataError(f"video {video} does not exist; check the path")
    labels = label_frames(csv_path, params.object_name)
    ranges = params.ranges(len(labels))
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    caches = {s: _cache_file(Path(cache_dir), video, csv_path, params, size, s) for s in splits} if cache_dir else {}
    for s, file in caches.items():
        if file.is_file():
            with np.load(file, allow_pickle=False) as data:
                out[s] = (torch.from_numpy(data["images"]), torch.from_numpy(data["labels"]))
    todo = [s for s in splits if s not in out]
    if todo:
        decoded = _decode_ranges(video, {s: ranges[s] for s in todo}, size, progress)
        for s in todo:
            images = decoded[s]
            targets = labels[ranges[s].start:ranges[s].stop].astype(np.int64)
            if s in caches:
                caches[s].parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(caches[s], suffix=".npz") as tmp, open(tmp, "wb") as handle:
                    np.savez(handle, images=images, labels=targets)
            out[s] = (torch.from_numpy(images), torch.from_numpy(targets))
    return {s: out[s] for s in splits}


def _decode_ranges(video: Path, ranges: dict[str, range], size: tuple[int, int],
                   progress: bool) -> dict[str, np.ndarray]:
    arrays = {s: np.empty((len(r), 3, *size), dtype=np.uint8) for s, r in ranges.items()}
    first, stop = min(r.start for r in ranges.values()), max(r.stop for r in ranges.values())
    last = first - 1
    frames = iter_frames(video, size=size, start=first, end=stop)
    for index, rgb in tqdm(frames, total=stop - first, desc=f"decoding {video.name}", unit="frame",
                           disable=not progress, mininterval=0.5):
        for s, r in ranges.items():
            if index in r:
                arrays[s][index - r.start] = rgb.transpose(2, 0, 1)
        last = index
    if last < stop - 1:
        raise DataError(f"{video} ended at frame {last} but the labels CSV needs frames up to {stop - 1}; "
                        "is the CSV for this video?")
    return arrays


def load_video_split(video: str | os.PathLike[str], labels_csv: str | os.PathLike[str],
                     config_or_params: str | TaskSpec | SplitParams | Mapping[str, Any], split: str, *,
                     size: int | tuple[int, int] = FRAME_SIZE, cache_dir: str | os.PathLike[str] | None = None,
                     progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a NoScope video as ``(uint8 (N, 3, H, W), int64 (N,))``; see :func:`load_video_splits`."""
    return load_video_splits(video, labels_csv, config_or_params, (split,), size=size, cache_dir=cache_dir,
                             progress=progress)[split]


class NoScopeVideoDataset(IterableDataset):
    """Streams ``(uint8 (3, H, W), label)`` for one split of a NoScope video, in frame order.

    Nothing is held in memory beyond the frame being decoded, so it suits splits too large for
    :func:`load_video_split`. Under a ``DataLoader`` with several workers each worker streams one
    contiguous part of the split (every worker decodes the video from its start: no seeking).
    """

    def __init__(self, video: str | os.PathLike[str], labels_csv: str | os.PathLike[str],
                 config: str | TaskSpec | SplitParams | Mapping[str, Any], split: str, *,
                 size: int | tuple[int, int] = FRAME_SIZE) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; use {', '.join(SPLITS)}")
        self.video = Path(video)
        self.params = config if isinstance(config, SplitParams) else split_params(config)
        self.size = check_size(size) or (FRAME_SIZE, FRAME_SIZE)
        self.labels = label_frames(labels_csv, self.params.object_name)
        self.frames = self.params.ranges(len(self.labels))[split]
        self.split = split

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        frames = self.frames
        info = get_worker_info()
        if info is not None:
            per_worker = -(-len(frames) // info.num_workers)
            frames = frames[info.id * per_worker:(info.id + 1) * per_worker]
        if not frames:
            return
        last = frames.start - 1
        for index, rgb in iter_frames(self.video, size=self.size, start=frames.start, end=frames.stop):
            yield torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))), int(self.labels[index])
            last = index
        if last < frames.stop - 1:
            raise DataError(f"{self.video} ended at frame {last} but the {self.split} split needs frames up to "
                            f"{frames.stop - 1}; is the labels CSV for this video?")
