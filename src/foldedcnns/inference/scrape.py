"""One decode for many models: ``foldedcnns scrape SPEC INPUT...`` and the decode-once cache.

Game-screen scraping reads several regions of every frame (gold, timer, coin count), one specialized
CNN each. A scrape SPEC is a JSON file::

    {"tasks": [
        {"name": "gold", "checkpoint": "runs/gold/best.pt", "crop": "600,20,52,22"},
        {"name": "timer", "checkpoint": "runs/timer/best.pt", "crop": [1180, 10, 60, 24],
         "backend": "openvino", "precision": "bf16"}
    ]}

Each task has a ``name`` (letters, digits, ``_`` and ``-``; it prefixes the task's CSV columns), a
``checkpoint`` (relative paths are read from the SPEC's folder; an OpenVINO IR ``.xml`` too) and a ``crop``
(``x,y,w,h`` or a list; leave it out for the whole frame), and optionally ``backend``, ``precision``,
``threads`` and ``batch_size`` (default: the command line's engine). Anything else is refused in one
line naming the task and the key. Every frame is decoded once (:mod:`foldedcnns.inference.decoding`) and
each model reads its own crop and folds its own inputs (:class:`~foldedcnns.inference.pipeline.Reader`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldedcnns.data.crop import Crop
from foldedcnns.data.video import is_stream_path, open_pyav
from foldedcnns.errors import ConfigError
from foldedcnns.inference.csvout import CSV_SUFFIX, output_paths
from foldedcnns.inference.decoding import DecodePlan, SourceInfo, ViewSpec, check_plan, source_views
from foldedcnns.inference.frame_cache import write_cache
from foldedcnns.inference.pipeline import (
    Reader,
    RunOptions,
    classify_all,
    model_threads,
    run_extra,
    stages_from_run,
)
from foldedcnns.inference.predictor import Predictor, deployment_engine
from foldedcnns.inference.report import PredictReport
from foldedcnns.inference.sources import VIDEO, Source, resolve_inputs
from foldedcnns.runtime.engine import Engine

TASK_KEYS = ("name", "checkpoint", "crop", "backend", "precision", "threads", "batch_size")
REQUIRED_KEYS = ("name", "checkpoint")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ScrapeTask:
    """One task of a SPEC: ``name``, ``checkpoint`` (resolved path), ``crop``, and engine overrides
    (``engine`` holds only the keys the SPEC gave)."""

    name: str
    checkpoint: Path
    crop: Crop | None = None
    engine: tuple[tuple[str, Any], ...] = ()
    batch_size: int | None = None

    def engine_from(self, default: Engine) -> Engine:
        """``default`` with this task's backend, precision and threads."""
        return default.replace(**dict(self.engine)) if self.engine else default


def _task(entry: Any, number: int, spec: Path) -> ScrapeTask:
    where = f"{spec}: task {number + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a JSON object with name, checkpoint and crop")
    name = entry.get("name")
    if isinstance(name, str) and _NAME.match(name):
        where = f"{spec}: task {name}"
    unknown = sorted(set(entry) - set(TASK_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; a task has {', '.join(TASK_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in entry:
            raise ConfigError(f"{where}: missing key {key!r}; a task needs {' and '.join(REQUIRED_KEYS)}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: key 'name' must be 1-64 letters, digits, _ or -, got {name!r}")
    if not isinstance(entry["checkpoint"], str) or not entry["checkpoint"]:
        raise ConfigError(f"{where}: key 'checkpoint' must be a path, got {entry['checkpoint']!r}")
    checkpoint = Path(entry["checkpoint"]).expanduser()
    checkpoint = checkpoint if checkpoint.is_absolute() else spec.parent / checkpoint
    if not checkpoint.is_file():
        raise ConfigError(f"{where}: key 'checkpoint': {checkpoint} does not exist; fix the path (relative paths "
                          "are read from the SPEC's folder)")
    crop = entry.get("crop")
    try:
        crop = Crop.parse(",".join(str(v) for v in crop) if isinstance(crop, list) else crop)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: key 'crop': {exc}") from None
    engine = tuple((k, entry[k]) for k in ("backend", "precision", "threads") if k in entry)
    try:
        Engine().replace(**dict(engine))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    batch = entry.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"{where}: key 'batch_size' must be an integer >= 1, got {batch!r}")
    return ScrapeTask(name, checkpoint, crop, engine, batch)


def load_spec(path: str | Path) -> list[ScrapeTask]:
    """The tasks of a scrape SPEC file, checked strictly (see the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"scrape spec {path} does not exist; pass a JSON file with a 'tasks' list") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read scrape spec {path} ({exc}); it must be a JSON object with a 'tasks' "
                          "list") from None
    if not isinstance(data, dict) or set(data) != {"tasks"} or not isinstance(data["tasks"], list) or not data["tasks"]:
        extra = sorted(set(data) - {"tasks"}) if isinstance(data, dict) else []
        hint = f" (unknown key {extra[0]!r})" if extra else ""
        raise ConfigError(f"scrape spec {path} must be a JSON object with one key, 'tasks', a non-empty list{hint}")
    tasks = [_task(entry, number, path) for number, entry in enumerate(data["tasks"])]
    names = [t.name for t in tasks]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{path}: task {name}: key 'name' is used twice; give every task its own name")
    return tasks


def check_crops_fit(tasks: Sequence[ScrapeTask], sources: Sequence[Source], spec: str | Path) -> None:
    """Refuse, before any work, a task whose crop lies outside the frames of a video input."""
    for source in sources:
        if source.kind != VIDEO or source.stream or not source.paths or is_stream_path(source.paths[0]):
            continue
        container = open_pyav(str(source.paths[0]), source.paths[0])
        width, height = container.streams.video[0].codec_context.width, container.streams.video[0].codec_context.height
        container.close()
        for task in tasks:
            crop = task.crop
            if crop is not None and (crop.x + crop.w > width or crop.y + crop.h > height):
                raise ConfigError(f"{spec}: task {task.name}: key 'crop' {','.join(map(str, crop))} lies outside the "
                                  f"{width}x{height} frames of {source.name}; fix the task's crop")


def build_readers(tasks: Sequence[ScrapeTask], engine: Engine | None = None, *,
                  partial_batches: bool = False) -> tuple[list[Reader], int]:
    """One :class:`Reader` per task, each on its engine (``engine`` with the task's overrides; int8 calibrated
    from the task's checkpoint); returns them and the model threads of the first. ``partial_batches``: the
    batches vary in size (``watch`` folds what the streams hold), so a static-shape engine also prepares the
    smaller shapes (:class:`Predictor`) instead of padding each batch to the task's batch size."""
    engine = (Engine() if engine is None else engine).resolved()
    readers, threads = [], 0
    for task in tasks:
        task_engine = deployment_engine(task.checkpoint, task.engine_from(engine)).resolved()
        task_threads = model_threads(task_engine)
        threads = threads or task_threads
        predictor = Predictor(task.checkpoint, engine=task_engine.replace(threads=task_threads),
                              batch_size=task.batch_size, partial_batches=partial_batches)
        readers.append(Reader(predictor, task.crop, task.name))
    return readers, threads


def run_scrape(spec: str | Path, inputs: Sequence[str], out: str | Path, *, engine: Engine | None = None,
               run: RunOptions | None = None) -> PredictReport:
    """Classify every frame of every input with every task of ``spec``, decoding each frame once; one CSV per
    input in the folder ``out``: ``frame`` (or ``path``), then ``<name>_label, <name>_class, <name>_score`` per
    task. Each task's columns equal ``predict`` of its checkpoint and crop alone (same engine and batch)."""
    run = RunOptions() if run is None else run
    if Path(out).suffix.lower() == CSV_SUFFIX:
        raise ConfigError(f"scrape writes one CSV per input into a folder; pass --out DIR, not {out}")
    tasks = load_spec(spec)
    sources = resolve_inputs(inputs)
    check_plan(sources, run.decode)
    check_crops_fit(tasks, sources, spec)
    Path(out).mkdir(parents=True, exist_ok=True)
    outputs = output_paths(sources, out, run.overwrite)
    readers, threads = build_readers(tasks, engine)
    results, wall = classify_all(readers, sources, outputs, run)
    extra = run_extra(results, sources, threads)
    extra["tasks"] = [{"name": r.name, "fold": r.predictor.fold, "batch_size": r.predictor.batch_size,
                       "backend": r.predictor.backend, "precision": r.predictor.engine.precision,
                       "crop": None if r.crop is None else ",".join(map(str, r.crop))} for r in readers]
    first = readers[0].predictor
    return PredictReport(results, first.fold, first.batch_size, first.backend, str(first.device), wall,
                         stages_from_run(results), extra=extra)


def run_cache(video: str, out: str | Path, *, spec: str | Path | None = None, checkpoint: str | Path | None = None,
              crop: Crop | str | None = None, plan: DecodePlan | None = None) -> dict[str, Any]:
    """Decode ``video`` once and store each task's model-ready inputs in the folder ``out``
    (:mod:`foldedcnns.inference.frame_cache`): the tasks of ``spec``, or one task of ``checkpoint`` and
    ``crop`` (named after the checkpoint's file). Returns what was written."""
    if (spec is None) == (checkpoint is None):
        raise ConfigError("cache needs a scrape SPEC or a checkpoint (with --crop), one of them")
    if spec is not None and crop is not None:
        raise ConfigError("--crop goes with a checkpoint; a SPEC gives each task its own crop")
    tasks = load_spec(spec) if spec is not None else [ScrapeTask("model", Path(checkpoint), Crop.parse(crop))]
    sources = resolve_inputs([video])
    if len(sources) != 1 or sources[0].kind != VIDEO or sources[0].stream:
        raise ConfigError(f"cache reads one video file, got {video}; pass the path of a video")
    check_crops_fit(tasks, sources, spec or checkpoint)
    views = {}
    for task in tasks:
        if not Path(task.checkpoint).is_file():
            raise ConfigError(f"checkpoint {task.checkpoint} does not exist; check the path")
        predictor_size = Predictor(task.checkpoint).input_hw
        views[task.name] = ViewSpec(predictor_size, task.crop)
    plan = DecodePlan() if plan is None else plan
    if not plan.full_fidelity:
        raise ConfigError("a cache holds every frame at full fidelity; drop --decode-frames/--fast-decode")
    info = SourceInfo()
    frames = source_views(sources[0], list(views.values()), plan, info)
    try:
        count = write_cache(out, sources[0].paths[0], views, frames)
    finally:
        frames.close()
    return {"video": video, "out": str(out), "frames": count, "decoders": info.decoders,
            "tasks": {name: {"size": list(v.size), "crop": None if v.crop is None else list(v.crop)}
                      for name, v in views.items()}}
