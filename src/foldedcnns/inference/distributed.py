"""Distributed batch inference on Ray Data: the same predictions as :func:`run_predict`, on many machines.

Plan: every video is one shard and every image set is cut into shards of whole batches. Decode tasks
turn a shard into batches of ``batch_size`` frames (a multiple of the fold, aligned with the start
of the input, exactly as on one machine); a pool of actors, each holding the model, classifies one
batch per call (``map_batches`` with a callable class, fractional CPUs or one GPU per actor). The
driver sorts the results back into input order and writes one CSV per input.

Because every input is cut into the same batches as on one machine, and a prediction depends only
on its group of f frames (see :mod:`foldedcnns.inference.predictor`), both paths give the same rows.
Input files and the checkpoint are read by path, so on a cluster they must be visible to every node
(a shared file system), and every node needs foldedcnns installed.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foldedcnns.data.crop import Crop
from foldedcnns.errors import ConfigError
from foldedcnns.inference.csvout import PredictionCSV
from foldedcnns.inference.decoding import DecodePlan, SourceInfo, ViewSpec, decode_batches
from foldedcnns.inference.pipeline import plan_inputs
from foldedcnns.inference.predictor import Predictor
from foldedcnns.inference.report import PredictReport, SourceResult
from foldedcnns.inference.sources import VIDEO, Source
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
# Batches per image shard: each shard is decoded by one task.
IMAGE_SHARD_BATCHES = 4


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


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray Data; install it with: pip install 'foldedcnns[ray]'") from exc
    return ray


def plan_shards(sources: Sequence[Source], batch_size: int) -> list[dict[str, Any]]:
    """Work items: one per video, one per ``IMAGE_SHARD_BATCHES`` batches of images (in input order)."""
    shards = []
    for index, source in enumerate(sources):
        step = len(source) if source.kind == VIDEO else batch_size * IMAGE_SHARD_BATCHES
        for shard, start in enumerate(range(0, len(source), step)):
            shards.append({"source": index, "shard": shard, "offset": start, "kind": source.kind,
                           "name": source.name, "paths": [str(p) for p in source.paths[start:start + step]]})
    return shards


def decode_shards(batch: dict[str, np.ndarray], *, size: tuple[int, int], batch_size: int,
                  crop: Crop | None) -> Iterator[dict[str, list[Any]]]:
    """Ray UDF: decode shards into one output row per batch of frames.

    ``keys`` are int64: the frame index for videos, the position in the input's file list for images.
    """
    for source, shard, offset, kind, name, paths in zip(batch["source"], batch["shard"], batch["offset"],
                                                        batch["kind"], batch["name"], batch["paths"], strict=True):
        shard_source = Source(str(kind), str(name), tuple(Path(p) for p in paths))
        batches = decode_batches(shard_source, [ViewSpec(size, crop)], batch_size, DecodePlan(decoders=1),
                                 SourceInfo())
        done = int(offset)
        for chunk in itertools.count():
            started = time.perf_counter()
            decoded = next(batches, None)
            if decoded is None:
                break
            count = len(decoded.keys)
            keys = decoded.keys if kind == VIDEO else range(done, done + count)
            done += count
            yield {"source": [int(source)], "shard": [int(shard)], "chunk": [chunk],
                   "keys": [np.array(keys, dtype=np.int64)],
                   "images": [decoded.views[0]], "error": ["" if decoded.error is None else str(decoded.error)],
                   "decode_seconds": [time.perf_counter() - started]}


class PredictActor:
    """Ray actor: holds one :class:`Predictor` and classifies one decoded batch per row."""

    def __init__(self, checkpoint: dict[str, Any], engine: Engine, batch_size: int) -> None:
        torch.set_num_threads(engine.threads or ACTOR_THREADS)
        self.predictor = Predictor(checkpoint, engine=engine, batch_size=batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        labels, scores, seconds = [], [], []
        for images in batch["images"]:
            started = time.perf_counter()
            preds = self.predictor.predict_batch(np.asarray(images, dtype=np.uint8))
            seconds.append(time.perf_counter() - started)
            labels.append(preds.labels)
            scores.append(preds.scores)
        return {"source": list(batch["source"]), "shard": list(batch["shard"]), "chunk": list(batch["chunk"]),
                "keys": list(batch["keys"]), "labels": labels, "scores": scores, "error": list(batch["error"]),
                "decode_seconds": list(batch["decode_seconds"]), "model_seconds": seconds}


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


def run_ray_predict(checkpoint: str | Path, inputs: Sequence[str], out: str | Path, *,
                    engine: Engine | None = None, batch_size: int | None = None, crop: Crop | str | None = None,
                    cluster: RayOptions | None = None, task_check: bool = True, progress: bool = False,
                    overwrite: bool = False) -> PredictReport:
    """Like :func:`~foldedcnns.inference.pipeline.run_predict`, on Ray Data; one CSV per input.

    ``engine`` (default ``Engine()``) is shipped to every actor with its device made concrete: ``cuda``
    (one GPU per actor; ``auto`` when the cluster has a GPU) or ``cpu``, and ``threads`` (default 1 per
    actor). ``cluster``: where the job runs (:class:`RayOptions`). An int8 engine brings its calibration
    (:func:`~foldedcnns.inference.predictor.deployment_engine`), so every actor quantizes with the same
    images.
    """
    ray = _import_ray()
    engine = Engine() if engine is None else engine
    cluster = RayOptions() if cluster is None else cluster
    ckpt = load_checkpoint(checkpoint)
    local = Predictor(ckpt, batch_size=batch_size)  # checks the checkpoint and batch size, gives sizes and names
    engine = engine.for_deployment(local.config.task)  # int8 without calibration fails here, not in every actor
    crop, sources, outputs = plan_inputs(inputs, out, local, crop, task_check, overwrite)
    if any(source.stream for source in sources):
        raise ConfigError("--ray reads inputs by path on the cluster's nodes, and a stream (stdin or a FIFO) can be "
                          "read only once: run predict on it without --ray")
    started_ray = _connect(ray, cluster.address, cluster.num_cpus)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        use_gpu = engine.device.startswith("cuda") or (engine.device == "auto" and gpus > 0)
        if use_gpu and gpus == 0:
            raise ConfigError(f"--device {engine.device} was asked for but the Ray cluster has no GPU; "
                              "pass --device cpu")
        pool = cluster.workers or (gpus if use_gpu else DEFAULT_CPU_WORKERS)
        actor_engine = engine.replace(device="cuda" if use_gpu else "cpu", threads=engine.threads or ACTOR_THREADS)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.execution_options.preserve_order = True
        started = time.perf_counter()
        shards = plan_shards(sources, local.batch_size)
        dataset = ray.data.from_items(shards, override_num_blocks=len(shards))
        dataset = dataset.map_batches(decode_shards, batch_size=1, num_cpus=DECODE_CPUS,
                                      fn_kwargs={"size": local.input_hw, "batch_size": local.batch_size,
                                                 "crop": crop})
        dataset = dataset.map_batches(
            PredictActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=ACTOR_CPUS, num_gpus=1 if use_gpu else 0,
            fn_constructor_kwargs={"checkpoint": ckpt, "engine": actor_engine, "batch_size": local.batch_size})
        rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in dataset.iter_rows():
            rows[int(row["source"])].append(row)
        wall = time.perf_counter() - started
    finally:
        if started_ray:
            ray.shutdown()
    results = [_write_source(source, output, rows[index], local.class_names, wall)
               for index, (source, output) in enumerate(zip(sources, outputs, strict=True))]
    return PredictReport(results, local.fold, local.batch_size, engine.backend, actor_engine.device, wall,
                         extra={"ray": {"address": cluster.address or "local", "workers": pool,
                                        "actor_resources": {"GPU": 1} if use_gpu else {"CPU": ACTOR_CPUS}}})


def _write_source(source: Source, output: Path, rows: list[dict[str, Any]], class_names: tuple[str, ...],
                  wall: float) -> SourceResult:
    """Write one input's rows in order, up to and including the first batch that carries a fault."""
    error = None
    decode = model = 0.0
    with PredictionCSV(output, source.key_column, class_names) as writer:
        for row in sorted(rows, key=lambda r: (int(r["shard"]), int(r["chunk"]))):
            keys = np.asarray(row["keys"]).tolist()
            writer.write(keys if source.kind == VIDEO else [str(source.paths[k]) for k in keys],
                         np.asarray(row["labels"]).tolist(),
                         np.asarray(row["scores"]).tolist())
            decode += float(row["decode_seconds"])
            model += float(row["model_seconds"])
            if row["error"]:
                error = str(row["error"])
                writer.stopped_early()
                break
    return SourceResult(source.name, source.kind, writer.output, writer.rows, wall, decode, model, error)
