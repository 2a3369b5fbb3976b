"""Distributed batch inference on Ray Data: the same CSVs as ``predict`` and ``scrape`` on one machine.

Plan (:mod:`foldedcnns.inference.distributed_shards` has the details): the driver cuts every input into
shards (a long video into keyframe segments, aligned on whole batches; an image set into shards of whole
batches). Decode tasks (one CPU and one FFmpeg thread each) turn a shard into batches of ``batch_size``
frames (a multiple of every model's fold, aligned with the start of the input, exactly as on one machine),
each frame cut into every model's view; a pool of actors, each holding every model (``scrape`` runs
several), classifies one batch per call (``map_batches`` with a callable class, fractional CPUs or one
GPU per actor), each model in batches of its own size as on one machine. The driver sorts the results
back into input order and writes one CSV per input, up to the first decoding fault.

Because every input is cut into the same batches as on one machine, and a prediction depends only on
its group of f frames (see :mod:`foldedcnns.inference.predictor`), both paths give the same rows, byte
for byte. Input files and checkpoints are read by path, so on a cluster they must be visible to every
node (a shared file system), and every node needs foldedcnns installed. Videos are decoded at full
fidelity (no ``--decode-frames``/``--fast-decode``); ``--decoders N`` cuts each video for N decode tasks
(default: the cluster's CPUs, at least one per actor).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldedcnns.data.crop import Crop
from foldedcnns.errors import ConfigError
from foldedcnns.inference.csvout import CSV_SUFFIX, PredictionCSV, output_paths
from foldedcnns.inference.distributed_shards import Shard, decode_shards, plan_shards
from foldedcnns.inference.openvino_ir import is_ir_path
from foldedcnns.inference.pipeline import Reader, RunOptions, decode_batch_size, plan_inputs
from foldedcnns.inference.predictor import Predictor, deployment_engine
from foldedcnns.inference.report import PredictReport, SourceResult
from foldedcnns.inference.scrape import check_crops_fit, load_spec
from foldedcnns.inference.sources import IMAGES, VIDEO, Source, resolve_inputs
from foldedcnns.runtime.checkpoint import load_checkpoint
from foldedcnns.runtime.engine import Engine

# CPUs reserved per model actor: fractional, so that decode tasks always find a free CPU
# (with whole CPUs the actors can take every CPU and starve the read tasks: ray#44687).
ACTOR_CPUS = 0.5
# PyTorch threads per actor unless the engine names its own (it reserves a fraction of a CPU).
ACTOR_THREADS = 1
# CPUs per decode task.
DECODE_CPUS = 1.0
# Model actors when --workers is not given and no GPU is used.
DEFAULT_CPU_WORKERS = 2


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray job runs: ``address`` ``"auto"`` or ``HOST:PORT`` of a running cluster (None
    starts a local Ray with ``num_cpus`` CPUs, all by default); ``workers`` model actors (default 2 on the
    CPU, one per GPU)."""

    address: str | None = None
    workers: int | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "num_cpus"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class RayModel:
    """One model every actor holds: its loaded ``checkpoint``, the ``engine`` it runs on, its ``batch_size``."""

    checkpoint: dict[str, Any]
    engine: Engine
    batch_size: int


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray Data; install it with: pip install 'foldedcnns[ray]'") from exc
    return ray


class ModelActor:
    """Ray actor: holds one :class:`Predictor` per model and classifies one decoded batch per row (each model
    on its own view, in batches of its own size, as :func:`~foldedcnns.inference.pipeline.classify_source`)."""

    def __init__(self, models: Sequence[RayModel]) -> None:
        torch.set_num_threads(models[0].engine.threads or ACTOR_THREADS)
        self.predictors = [Predictor(m.checkpoint, engine=m.engine, batch_size=m.batch_size) for m in models]

    def _classify(self, predictor: Predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        for start in range(0, len(images), predictor.batch_size):
            preds = predictor.predict_batch(images[start:start + predictor.batch_size])
            labels.append(preds.labels)
            scores.append(preds.scores)
        return np.concatenate(labels), np.concatenate(scores)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        labels, scores, seconds = [], [], []
        for row in range(len(batch["keys"])):
            started = time.perf_counter()
            preds = [self._classify(p, np.asarray(batch[f"view{m}"][row], dtype=np.uint8))
                     for m, p in enumerate(self.predictors)]
            seconds.append(time.perf_counter() - started)
            labels.append(np.stack([p[0] for p in preds], axis=1))  # (N, models)
            scores.append(np.stack([p[1] for p in preds], axis=1))
        passed = ("source", "shard", "chunk", "keys", "error", "decode_seconds", "pid")
        return {**{key: list(batch[key]) for key in passed}, "labels": labels, "scores": scores,
                "model_seconds": seconds}


def _connect(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at ``address`` or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address}: {exc}; start one with 'ray start --head' "
                          "or leave out --ray-address to run a local Ray") from exc
    return True


def _check_run(run: RunOptions, sources: Sequence[Source]) -> None:
    if not run.decode.full_fidelity:
        raise ConfigError("--ray decodes every frame at full fidelity; drop --decode-frames/--fast-decode, or run "
                          "without --ray")
    if any(source.stream for source in sources):
        raise ConfigError("--ray reads inputs by path on the cluster's nodes, and a stream (stdin or a FIFO) can be "
                          "read only once: run it without --ray")


@dataclass
class _Run:
    """What the Ray job did: the rows of each input, its shards, wall time and the report's ``ray`` entry."""

    rows: dict[int, list[dict[str, Any]]]
    shards: list[Shard]
    wall: float
    device: str
    extra: dict[str, Any]


def _execute(readers: Sequence[Reader], models: Sequence[RayModel], sources: Sequence[Source],
             cluster: RayOptions, run: RunOptions) -> _Run:
    """Decode and classify every source on Ray (see the module docstring); the rows are not yet written."""
    ray = _import_ray()
    started_ray = _connect(ray, cluster.address, cluster.num_cpus)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        device = models[0].engine.device
        use_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
        if use_gpu and gpus == 0:
            raise ConfigError(f"--device {device} was asked for but the Ray cluster has no GPU; pass --device cpu")
        pool = cluster.workers or (gpus if use_gpu else DEFAULT_CPU_WORKERS)
        actor_models = [dataclasses.replace(m, engine=m.engine.replace(
            device="cuda" if use_gpu else "cpu", threads=m.engine.threads or ACTOR_THREADS)) for m in models]
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = run.progress
        context.execution_options.preserve_order = True
        started = time.perf_counter()
        batch_size = decode_batch_size(readers)
        cut_for = run.decode.decoders or max(pool, int(resources.get("CPU", 1)))  # decode tasks per video
        shards, indexes = plan_shards(sources, batch_size, cut_for)
        dataset = ray.data.from_items([{"shard": n} for n in range(len(shards))], override_num_blocks=len(shards))
        dataset = dataset.map_batches(decode_shards, batch_size=1, num_cpus=DECODE_CPUS,
                                      fn_kwargs={"shards": shards, "indexes": indexes,
                                                 "views": [r.view for r in readers], "batch_size": batch_size})
        dataset = dataset.map_batches(ModelActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=pool),
                                      num_cpus=ACTOR_CPUS, num_gpus=1 if use_gpu else 0,
                                      fn_constructor_kwargs={"models": actor_models})
        rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in dataset.iter_rows():
            rows[int(row["source"])].append(row)
        wall = time.perf_counter() - started
    finally:
        if started_ray:
            ray.shutdown()
    pids = {int(row["pid"]) for source_rows in rows.values() for row in source_rows}
    extra = {"address": cluster.address or "local", "workers": pool,
             "actor_resources": {"GPU": 1} if use_gpu else {"CPU": ACTOR_CPUS},
             "shards": len(shards), "decode_processes": len(pids)}
    return _Run(rows, shards, wall, actor_models[0].engine.device, extra)


def _write_all(job: _Run, readers: Sequence[Reader], sources: Sequence[Source],
               outputs: Sequence[Path]) -> list[SourceResult]:
    results = []
    videos: dict[str, dict[str, int]] = {}
    for number, (source, output) in enumerate(zip(sources, outputs, strict=True)):
        result = _write_source(source, output, job.rows[number], readers, job.wall)
        results.append(result)
        if source.kind == VIDEO:
            videos[source.name] = {"shards": sum(s.source == number for s in job.shards),
                                   "decode_processes": result.decoders}
    if videos:
        job.extra["videos"] = videos
    return results


def _write_source(source: Source, output: Path, rows: list[dict[str, Any]], readers: Sequence[Reader],
                  wall: float) -> SourceResult:
    """Write one input's rows in order, up to and including the first batch that carries a fault."""
    error = None
    decode = model = 0.0
    pids: set[int] = set()
    names = None if readers[0].name is None else [str(r.name) for r in readers]
    with PredictionCSV(output, source.key_column, [r.predictor.class_names for r in readers], names) as writer:
        for row in sorted(rows, key=lambda r: (int(r["shard"]), int(r["chunk"]))):
            keys = np.asarray(row["keys"]).tolist()
            if source.kind == IMAGES:
                keys = [str(source.paths[k]) for k in keys]
            labels, scores = np.asarray(row["labels"]).tolist(), np.asarray(row["scores"]).tolist()
            writer.write_rows([(key, True, list(zip(label, score, strict=True)))
                               for key, label, score in zip(keys, labels, scores, strict=True)])
            decode += float(row["decode_seconds"])
            model += float(row["model_seconds"])
            pids.add(int(row["pid"]))
            if row["error"]:
                error = str(row["error"])
                writer.stopped_early()
                break
    return SourceResult(source.name, source.kind, writer.output, writer.rows, wall, decode, model, error,
                        decoders=max(1, len(pids)))


def run_ray_predict(checkpoint: str | Path, inputs: Sequence[str], out: str | Path, *,
                    engine: Engine | None = None, batch_size: int | None = None, crop: Crop | str | None = None,
                    cluster: RayOptions | None = None, run: RunOptions | None = None) -> PredictReport:
    """Like :func:`~foldedcnns.inference.pipeline.run_predict`, on Ray Data; one CSV per input.

    ``engine`` (default ``Engine()``) is shipped to every actor with its device made concrete: ``cuda``
    (one GPU per actor; ``auto`` when the cluster has a GPU) or ``cpu``, and ``threads`` (default 1 per
    actor). ``cluster``: where the job runs (:class:`RayOptions`). ``run``: task check, overwrite, progress
    and ``decode.decoders`` (the decode tasks each video is cut for; see the module docstring). An int8
    engine brings its calibration (:func:`~foldedcnns.inference.predictor.deployment_engine`), so every
    actor quantizes with the same images.
    """
    run = RunOptions() if run is None else run
    engine = Engine() if engine is None else engine
    ckpt = load_checkpoint(checkpoint)
    local = Predictor(ckpt, batch_size=batch_size)  # checks the checkpoint and batch size, gives sizes and names
    engine = engine.for_deployment(local.config.task)  # int8 without calibration fails here, not in every actor
    crop, sources, outputs = plan_inputs(inputs, out, local, crop, run.task_check, run.overwrite)
    _check_run(run, sources)
    readers = [Reader(local, crop)]
    job = _execute(readers, [RayModel(ckpt, engine, local.batch_size)], sources, cluster or RayOptions(), run)
    results = _write_all(job, readers, sources, outputs)
    return PredictReport(results, local.fold, local.batch_size, engine.backend, job.device, job.wall,
                         extra={"ray": job.extra})


def run_ray_scrape(spec: str | Path, inputs: Sequence[str], out: str | Path, *, engine: Engine | None = None,
                   cluster: RayOptions | None = None, run: RunOptions | None = None) -> PredictReport:
    """Like :func:`~foldedcnns.inference.scrape.run_scrape`, on Ray Data: every actor holds every task's model,
    each frame is decoded once and cut into every task's view; one CSV per input in the folder ``out``.
    ``engine``, ``cluster`` and ``run`` as for :func:`run_ray_predict` (each task's SPEC overrides apply)."""
    run = RunOptions() if run is None else run
    if Path(out).suffix.lower() == CSV_SUFFIX:
        raise ConfigError(f"scrape writes one CSV per input into a folder; pass --out DIR, not {out}")
    tasks = load_spec(spec)
    sources = resolve_inputs(inputs)
    _check_run(run, sources)
    check_crops_fit(tasks, sources, spec)
    engine = Engine() if engine is None else engine
    readers, models = [], []
    for task in tasks:
        if is_ir_path(task.checkpoint):
            raise ConfigError(f"{spec}: task {task.name}: --ray runs checkpoints, not an OpenVINO IR; give the .pt "
                              "checkpoint (with \"backend\": \"openvino\") or drop --ray")
        ckpt = load_checkpoint(task.checkpoint)
        local = Predictor(ckpt, batch_size=task.batch_size)
        readers.append(Reader(local, task.crop, task.name))
        models.append(RayModel(ckpt, deployment_engine(ckpt, task.engine_from(engine)), local.batch_size))
    Path(out).mkdir(parents=True, exist_ok=True)
    outputs = output_paths(sources, out, run.overwrite)
    job = _execute(readers, models, sources, cluster or RayOptions(), run)
    results = _write_all(job, readers, sources, outputs)
    tasks_extra = [{"name": r.name, "fold": r.predictor.fold, "batch_size": r.predictor.batch_size,
                    "backend": m.engine.backend, "precision": m.engine.precision,
                    "crop": None if r.crop is None else ",".join(map(str, r.crop))}
                   for r, m in zip(readers, models, strict=True)]
    first = readers[0].predictor
    return PredictReport(results, first.fold, first.batch_size, models[0].engine.backend, job.device, job.wall,
                         extra={"ray": job.extra, "tasks": tasks_extra})
