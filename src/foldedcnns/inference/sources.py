"""What ``foldedcnns predict`` reads: video files, FIFOs and stdin (``-``), folders of images, globs.

:func:`resolve_inputs` turns command-line inputs into :class:`Source` objects: one per video, one
for all images of a folder or a glob. A FIFO (named pipe) and ``-`` (standard input) are videos read
once, in order (:attr:`Source.stream`); nothing opens them before decoding starts.
A folder written by ``foldedcnns data cache`` is a cache source (:mod:`foldedcnns.inference.frame_cache`).
Decoding a source is :mod:`foldedcnns.inference.decoding`.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from foldedcnns.data.crop import Crop
from foldedcnns.data.imageio import IMG_EXTENSIONS, is_image_file, read_image
from foldedcnns.data.video import is_stream_path
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.inference.frame_cache import CACHE, is_cache_dir
from foldedcnns.models.spec import TaskSpec

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
VIDEO = "video"
IMAGES = "images"
GLOB_CHARS = "*?["
STDIN = "-"  # the input name that reads a video from standard input


@dataclass(frozen=True)
class Source:
    """One input that produces one CSV: a video file, or an ordered list of image files.

    ``stream``: a video that can be read only once, in order (a FIFO, or standard input when ``name`` is
    :data:`STDIN`, with no path).
    """

    kind: str
    name: str
    paths: tuple[Path, ...]
    stream: bool = False

    @property
    def key_column(self) -> str:
        """CSV column that identifies a row: ``frame`` for videos, ``path`` for images."""
        return "path" if self.kind == IMAGES else "frame"

    @property
    def stem(self) -> str:
        """Default output file name (without ``.csv``) when several sources are written to a folder."""
        if self.name == STDIN:
            return "stdin"
        path = Path(self.name)
        if self.kind == CACHE:
            return path.name
        return path.stem if self.kind == VIDEO else (path.name.replace("*", "_") or "images")

    def __len__(self) -> int:
        return len(self.paths)


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    """Image files anywhere under ``folder``, sorted by path."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p) and p.is_file())


def _resolve_one(text: str) -> list[Source]:
    if text == STDIN:
        return [Source(VIDEO, STDIN, (), stream=True)]
    path = Path(text)
    if any(c in text for c in GLOB_CHARS) and not path.exists():
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
        videos, images = [m for m in matches if _is_video(m)], [m for m in matches if is_image_file(m)]
        if videos and images:
            raise ConfigError(f"glob {text!r} matches both videos and images; use one glob for each")
        if videos:
            return [Source(VIDEO, str(v), (v,)) for v in videos]
        if not images:
            raise DataError(f"glob {text!r} matches no image or video files "
                            f"(images: {', '.join(IMG_EXTENSIONS)}; videos: {', '.join(VIDEO_EXTENSIONS)})")
        return [Source(IMAGES, text, tuple(images))]
    if path.is_dir() and is_cache_dir(path):
        return [Source(CACHE, str(path), (path,))]
    if path.is_dir():
        images = _images_under(path)
        if not images:
            hint = (f"; it holds videos, pass them as a glob such as '{path}/*.mp4'"
                    if any(_is_video(p) for p in path.iterdir()) else "")
            raise DataError(f"folder {path} holds no images ({', '.join(IMG_EXTENSIONS)}){hint}")
        return [Source(IMAGES, str(path), tuple(images))]
    if is_stream_path(path):
        return [Source(VIDEO, str(path), (path,), stream=True)]
    if path.is_file():
        if is_image_file(path):
            return [Source(IMAGES, str(path), (path,))]
        return [Source(VIDEO, str(path), (path,))]
    if path.exists():
        raise DataError(f"input {text} is not a file, a folder or a pipe; pass a video file, a FIFO, - (stdin), "
                        "a folder of images or a glob")
    raise DataError(f"input {text} does not exist; pass a video file, a folder of images or a glob")


def resolve_inputs(inputs: Sequence[str]) -> list[Source]:
    """Turn command-line inputs into sources, in the order given (globs expanded in sorted order)."""
    if not inputs:
        raise ConfigError("no input given; pass a video file, a folder of images or a glob")
    sources = [s for text in inputs for s in _resolve_one(str(text))]
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise ConfigError(f"input {source.name} is given twice; pass each input once")
        seen.add(source.name)
    return sources


def labelled_classes(source: Source) -> dict[str, Path] | None:
    """For a folder laid out as ``folder/<class>/<image>`` (an image dataset of some task), the first
    image of each class folder; None for any other source."""
    root = Path(source.name)
    if source.kind != IMAGES or not root.is_dir():
        return None
    firsts: dict[str, Path] = {}
    for path in source.paths:
        parts = path.relative_to(root).parts
        if len(parts) != 2:
            return None
        firsts.setdefault(parts[0], path)
    return firsts


def check_task_match(source: Source, task: TaskSpec, size: tuple[int, int], crop: Crop | None) -> None:
    """Refuse a labelled image folder that belongs to another task than the model's.

    A folder ``folder/<class>/<image>`` is a dataset made for a task: its class folders must be
    classes of ``task`` and (without ``crop``) its images must already have the model's ``size``
    (height, width). Unlabelled folders, globs and videos are not checked: they are resized.
    """
    firsts = labelled_classes(source)
    if firsts is None:
        return
    skip = "or pass --no-task-check to predict anyway"
    unknown = sorted(set(firsts) - set(task.class_names))
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise DataError(f"{source.name} is labelled with classes ({shown}) that task {task.name} does not have; "
                        f"pass the checkpoint trained for these images, {skip}")
    if crop is None:
        found = read_image(next(iter(firsts.values()))).shape[:2]
        if found != tuple(size):
            raise DataError(f"images in {source.name} are {found[1]}x{found[0]} but task {task.name} reads "
                            f"{size[1]}x{size[0]} images; pass the checkpoint trained for these images, {skip}")
