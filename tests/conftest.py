"""Shared test settings and fixtures: tiny tasks, image folders, checkpoints and videos.

Tests use the fixtures (never ``import conftest``). Factories are fixtures that return a function:

* ``tiny_task`` / ``tiny_digits_task`` / ``tiny_train_task`` / ``tiny_noscope_task``: tiny CNNs' tasks;
  ``game_task(name, height, width, classes)`` makes other game tasks with the same tiny CNN.
* ``task_file(spec)`` writes a task's JSON description; ``tiny_task_file`` is ``tiny_task``'s.
* ``image_folder(task, {"train": 13, "val": 4, "test": 4})`` writes ``root/<split>/<class>/<i>.png``;
  ``class_folders(root, {"cat": 2})`` writes ``root/<class>/<i>.png``; ``image_files(folder, names)``
  writes unlabelled random images.
* ``tiny_train_files(counts)`` writes ``tiny_train_task`` (or it with other ``classes``) as a description
  JSON and an image folder: the training tests' ``(description, data)``.
* ``tiny_checkpoint(fold)`` saves a checkpoint with seeded random weights (cached for the session).
* ``tiny_video()`` writes a short H.264 video (PyAV, else OpenCV; skips without either).
* ``noscope_model``: ``tiny_noscope_task`` at f=2 with seeded weights, in eval mode; ``one_thread`` runs a
  test on one PyTorch thread (the backends' and profilers' tests: the machine may be shared).
* ``colour_classifier``: ``(checkpoint, data)`` of a tiny f=2 CNN trained on three colour classes (the int8
  and tune accuracy tests: a model that is right on its test images, so agreement means something).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foldedcnns.core.folding import run_folded
from foldedcnns.data.folder import ImageFolder
from foldedcnns.data.model_input import to_model_input
from foldedcnns.models import TaskSpec, build_model, get_task, spec_from_dict
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.runtime.threads import torch_threads

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))

# The tiny game CNN: one conv unit of 4 feature maps, 2 in the last conv (373 parameters for tiny_task, f = 1).
TINY_GAME_ARCHITECTURE = {"template": "1_1_convnet", "conv1_n_feature_maps": 4, "convi_n_feature_maps": 4,
                          "convn_n_feature_maps": 2}
# The training tests' CNN (template 1_3s_1_convnet): big enough to learn the colour classes in a few epochs.
TINY_TRAIN_ARCHITECTURE = {"n-conv-units": 1, "conv1_n_feature_maps": 8, "convi_n_feature_maps": 8,
                           "convn_n_feature_maps": 4}
TINY_NOSCOPE = {"name": "tiny/noscope", "family": "noscope", "out-h": 12, "out-w": 12, "chan-in": 3,
                "ClassNames": ["0", "1"], "model-architecture": {"nb_filters": 4, "nb_dense": 8, "nb_layers": 2}}
DIGIT_CLASSES = (*map(str, range(10)), "other")  # the classes of lol/goldnumber-fraction

# Videos: frame i is grey 8*i (with a red 16x16 block at the top left), 48 x 64, so indices read back.
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_STEP = 30, (48, 64), 8

TaskFactory = Callable[..., TaskSpec]
TaskFileFactory = Callable[..., Path]
ImageFolderFactory = Callable[..., Path]
ClassFoldersFactory = Callable[..., dict[str, list[np.ndarray]]]
ImageFilesFactory = Callable[..., list[np.ndarray]]
CheckpointFactory = Callable[..., Path]
VideoFactory = Callable[..., Path]
TrainFilesFactory = Callable[..., tuple[Path, Path]]


# -- plain functions (the fixtures below hand them to tests) ------------------------------------------


def make_game_task(name: str = "tiny/game", height: int = 16, width: int = 20,
                   classes: Sequence[str] = ("a", "b", "c"), architecture: Mapping[str, object] | None = None,
                   ) -> TaskSpec:
    """A game-family task of the tiny CNN (or ``architecture``) on ``height`` x ``width`` RGB crops."""
    return spec_from_dict({"name": name, "family": "game", "out-h": height, "out-w": width, "chan-in": 3,
                           "ClassNames": list(classes),
                           "model-architecture": dict(TINY_GAME_ARCHITECTURE if architecture is None
                                                      else architecture)})


def write_task_file(path: Path, task: TaskSpec) -> Path:
    """Write ``task``'s JSON description to ``path``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(task.to_dict()), encoding="utf-8")
    return path


def write_class_folders(root: Path, counts: Mapping[str, int], size: tuple[int, int],
                        rng: np.random.Generator | int = 0) -> dict[str, list[np.ndarray]]:
    """``root/<class>/<i>.png``, ``counts[class]`` PNGs each; the k-th class lights colour channel k % 3
    (+150) over noise in [0, 80), so the classes are learnable. Returns the written images per class."""
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    written: dict[str, list[np.ndarray]] = {}
    for k, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        images = written.setdefault(name, [])
        for i in range(n):
            image = rng.integers(0, 80, size=(*size, 3), dtype=np.uint8)
            image[:, :, k % 3] += 150
            Image.fromarray(image).save(folder / f"{i}.png")
            images.append(image)
    return written


def write_image_folder(root: Path, task: TaskSpec, counts: Mapping[str, int], seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.png``: ``counts[split]`` images per class of ``task``, at its size."""
    rng = np.random.default_rng(seed)
    for split, per_class in counts.items():
        write_class_folders(root / split, dict.fromkeys(task.class_names, per_class), (task.height, task.width), rng)
    return root


def write_images(folder: Path, names: Iterable[str], size: tuple[int, int] = (22, 52),
                 seed: int = 0) -> list[np.ndarray]:
    """Random RGB images (uniform 0..255) at ``folder/<name>`` (format from the suffix, sub-folders made)."""
    rng = np.random.default_rng(seed)
    images = []
    for name in names:
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / name)
        images.append(image)
    return images


def level_frames(count: int = VIDEO_FRAMES, size: tuple[int, int] = VIDEO_SIZE, step: int = VIDEO_STEP,
                 marker: bool = True) -> Iterator[np.ndarray]:
    """Frame i is grey ``step * i``; ``marker`` paints a red 16x16 block at the top left."""
    for i in range(count):
        frame = np.full((*size, 3), step * i, dtype=np.uint8)
        if marker:
            frame[:16, :16] = (250, 20, 20)
        yield frame


def remux_faststart(source: Path, path: Path) -> Path:
    """Copy the video packets of ``source`` into an MP4 at ``path`` with its index first (PyAV)."""
    import av

    with av.open(str(source)) as src, av.open(str(path), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return path


def encode_video(path: Path, frames: Iterable[np.ndarray], faststart: bool = False) -> int:
    """Encode RGB frames to ``path`` with PyAV (H.264, ``faststart``: index first, so a cut file still
    opens), else OpenCV (mp4v); skips the test without either. Returns the frame count."""
    if importlib.util.find_spec("av") is not None:
        from foldedcnns.data.video import write_video

        if not faststart:
            return write_video(path, frames, options={"preset": "ultrafast"})

        plain = path.with_name(f".plain-{path.name}")
        count = write_video(plain, frames, options={"preset": "ultrafast"})
        remux_faststart(plain, path)
        plain.unlink()
        return count
    if faststart or importlib.util.find_spec("cv2") is None:
        pytest.skip("writing this test video needs PyAV" + ("" if faststart else " or OpenCV"))
    import cv2

    writer, count = None, 0
    try:
        for frame in frames:
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (width, height))
                if not writer.isOpened():
                    pytest.skip("OpenCV cannot write mp4 video here")
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    return count


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_task() -> TaskSpec:
    """``tiny/game``: 3 classes (a, b, c) of 16 x 20 RGB crops, the tiny game CNN."""
    return make_game_task()


@pytest.fixture(scope="session")
def tiny_digits_task() -> TaskSpec:
    """``tiny/digits``: the 11 classes (0-9, other) and 22 x 52 input of lol/goldnumber-fraction, tiny CNN."""
    return make_game_task("tiny/digits", 22, 52, DIGIT_CLASSES)


@pytest.fixture(scope="session")
def tiny_train_task() -> TaskSpec:
    """``test/tiny``: 3 classes (a, b, c) of 15 x 35 crops (the smallest game input of the original,
    lol/timer-minutes) and a CNN of 8 feature maps, which learns :func:`write_image_folder` data quickly."""
    return make_game_task("test/tiny", 15, 35, architecture=TINY_TRAIN_ARCHITECTURE)


@pytest.fixture(scope="session")
def tiny_noscope_task() -> TaskSpec:
    """``tiny/noscope``: a 2-class NoScope CNN (2 convs of 4 maps, dense 8) on 12 x 12 RGB images."""
    return spec_from_dict(TINY_NOSCOPE)


@pytest.fixture(scope="session")
def game_task() -> TaskFactory:
    """Factory ``(name, height, width, classes, architecture=None) -> TaskSpec`` of tiny game tasks."""
    return make_game_task


@pytest.fixture
def task_file(tmp_path: Path) -> TaskFileFactory:
    """Factory ``(task, name="task.json") -> Path``: the task's JSON description in ``tmp_path``."""

    def make(task: TaskSpec, name: str = "task.json") -> Path:
        return write_task_file(tmp_path / name, task)

    return make


@pytest.fixture
def tiny_task_file(task_file: TaskFileFactory, tiny_task: TaskSpec) -> Path:
    """``tiny_task``'s JSON description, ``tmp_path/tiny.json``."""
    return task_file(tiny_task, "tiny.json")


@pytest.fixture
def image_folder(tmp_path: Path) -> ImageFolderFactory:
    """Factory ``(task, counts, *, root=tmp_path/"data", seed=0) -> root`` writing
    ``root/<split>/<class>/<i>.png`` with ``counts[split]`` seeded, learnable images per class."""

    def make(task: TaskSpec, counts: Mapping[str, int], *, root: Path | None = None, seed: int = 0) -> Path:
        return write_image_folder(tmp_path / "data" if root is None else root, task, counts, seed)

    return make


@pytest.fixture
def tiny_train_files(tmp_path: Path, tiny_train_task: TaskSpec) -> TrainFilesFactory:
    """Factory ``(counts, *, classes=None, root=tmp_path, seed=0) -> (description, data)``: ``tiny_train_task``
    (with ``classes`` instead of a, b, c if given) written to ``root/tiny.json``, and ``root/data/<split>/
    <class>/<i>.png`` with ``counts[split]`` learnable images per class (:func:`write_image_folder`)."""

    def make(counts: Mapping[str, int], *, classes: Sequence[str] | None = None, root: Path | None = None,
             seed: int = 0) -> tuple[Path, Path]:
        root = tmp_path if root is None else root
        task = tiny_train_task if classes is None else \
            spec_from_dict({**tiny_train_task.to_dict(), "ClassNames": list(classes)})
        return write_task_file(root / "tiny.json", task), write_image_folder(root / "data", task, counts, seed)

    return make


@pytest.fixture
def class_folders() -> ClassFoldersFactory:
    """Factory ``(root, counts, *, size=(6, 8), seed=0) -> {class: images}`` writing
    ``root/<class>/<i>.png`` (no split level); returns the written images."""

    def make(root: Path, counts: Mapping[str, int], *, size: tuple[int, int] = (6, 8),
             seed: int = 0) -> dict[str, list[np.ndarray]]:
        return write_class_folders(root, counts, size, seed)

    return make


@pytest.fixture
def image_files() -> ImageFilesFactory:
    """Factory ``(folder, names, *, size=(22, 52), seed=0) -> images``: random RGB files at the names."""

    def make(folder: Path, names: Iterable[str], *, size: tuple[int, int] = (22, 52),
             seed: int = 0) -> list[np.ndarray]:
        return write_images(folder, names, size, seed)

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFactory:
    """Factory ``(fold=1, *, task=tiny_task, seed=0) -> Path``: a saved checkpoint of ``task`` (a TaskSpec
    or task name) at ``fold`` with weights drawn under ``torch.manual_seed(seed)``. Files are cached for
    the session: treat them as read-only. The global RNG state is left as it was."""
    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[str, Path] = {}

    def make(fold: int = 1, *, task: TaskSpec | str | None = None, seed: int = 0) -> Path:
        spec = get_task(task) if isinstance(task, str) else (task or make_game_task())
        key = json.dumps([spec.to_dict(), fold, seed], sort_keys=True)
        if key not in cache:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_model(spec, fold=fold)
            path = root / f"{_slug(spec.name)}-{len(cache)}" / f"f{fold}.pt"
            path.parent.mkdir()
            cache[key] = save_checkpoint(path, make_checkpoint(model))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_video(tmp_path_factory: pytest.TempPathFactory) -> VideoFactory:
    """Factory ``(frames=None, *, path=None, count=30, marker=True, faststart=False) -> Path``: an H.264 MP4
    (PyAV; mp4v through OpenCV without it; skips without both) of ``frames`` or of :func:`level_frames`
    (frame i grey 8*i, 48 x 64, a red block at the top left if ``marker``). ``path`` defaults to a new
    session folder's ``clip.mp4``; ``faststart`` puts the index first (a cut file still opens; PyAV only)."""

    def make(frames: Iterable[np.ndarray] | None = None, *, path: Path | None = None, count: int = VIDEO_FRAMES,
             marker: bool = True, faststart: bool = False) -> Path:
        if path is None:
            path = tmp_path_factory.mktemp("video") / "clip.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = level_frames(count, marker=marker) if frames is None else frames
        encode_video(path, frames, faststart=faststart)
        return path

    return make


# colour_classifier: 15x35 RGB, three classes; class k lights colour channel k over noise.
COLOUR_HEIGHT, COLOUR_WIDTH, COLOUR_CLASSES = 15, 35, ("a", "b", "c")
COLOUR_DESCRIPTION = {"name": "test/int8", "family": "game", "out-h": COLOUR_HEIGHT, "out-w": COLOUR_WIDTH,
                      "chan-in": 3, "ClassNames": list(COLOUR_CLASSES),
                      "model-architecture": {"n-conv-units": 1, "conv1_n_feature_maps": 8, "convi_n_feature_maps": 8,
                                             "convn_n_feature_maps": 4}}
COLOUR_STEPS, COLOUR_BATCH = 80, 16


def write_colour_split(root: Path, per_class: int, rng: np.random.Generator) -> None:
    """root/<class>/<i>.png; class k lights colour channel k % 3 over noise (learnable in a few steps)."""
    for k, name in enumerate(COLOUR_CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 80, size=(COLOUR_HEIGHT, COLOUR_WIDTH, 3), dtype=np.uint8)
            image[:, :, k % 3] += 150
            Image.fromarray(image).save(root / name / f"{i}.png")


@pytest.fixture(scope="session")
def colour_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, data folder) of a tiny f=2 CNN trained (Adam, 80 steps of 16 images; about a second on one
    thread) on the colour classes of ``DIR/train`` (40 images per class); ``DIR/test`` has 70 per class."""
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 70)):
        write_colour_split(root / "data" / split, n, rng)
    spec = spec_from_dict(COLOUR_DESCRIPTION)
    images, labels = ImageFolder(root / "data" / "train", classes=COLOUR_CLASSES).tensors()
    x = to_model_input(images, spec, layout="nchw")
    with torch.random.fork_rng(devices=[]), torch_threads(1):  # one thread: the machine may be shared
        torch.manual_seed(0)
        model = build_model(spec, fold=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(COLOUR_STEPS):
            pick = torch.randint(0, len(labels), (COLOUR_BATCH,))
            loss = torch.nn.functional.cross_entropy(run_folded(model, x[pick], 2), labels[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return save_checkpoint(root / "tiny.pt", make_checkpoint(model.eval())), root / "data"


@pytest.fixture()
def noscope_model(tiny_noscope_task: TaskSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_noscope_task, fold=2).eval()


@pytest.fixture()
def one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


SWEEP_COUNTS = {"train": 6, "val": 2, "test": 3}  # images per class and split of each sweep test task


@pytest.fixture
def two_tasks(tmp_path: Path, tiny_train_task: TaskSpec,
              image_folder: Callable[..., Path]) -> tuple[list[Path], Path]:
    """Description files of test/a and test/b (the tiny training CNN) and DATA/test/{a,b}/<split>/<class>/: the
    two tasks of the sweep tests."""
    descs = []
    for i, name in enumerate(("a", "b")):
        spec = spec_from_dict({**tiny_train_task.to_dict(), "name": f"test/{name}"})
        descs.append(tmp_path / f"{name}.json")
        descs[-1].write_text(json.dumps(spec.to_dict()), encoding="utf-8")
        image_folder(spec, SWEEP_COUNTS, root=tmp_path / "data" / "test" / name, seed=i)
    return descs, tmp_path / "data"


# -- the process tree (from /proc), for tests that check no process of a command is left --


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc)."""
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
