"""Prediction over videos and image sets: decode once in the background, classify, write one CSV per input.

For each source a worker thread decodes (:mod:`foldedcnns.inference.decoding`: by segments in several
processes for a video file, sequentially for a pipe) and cuts every frame into the view of each model
(:class:`Reader`: ``predict`` has one, ``scrape`` several), in batches through a bounded queue; the
caller's thread runs each model on its own view in batches of its own size (groups of f frames aligned
on the start of the input, so a model's rows equal its rows alone) and appends the rows to the CSV once
every model has classified the frame (:class:`~foldedcnns.inference.rows.RowAssembler`). The CSV is
written under a temporary name and renamed at the end. When decoding fails part-way (a truncated video,
an unreadable image), the rows of every frame decoded before the fault go to ``NAME.partial`` (never over
``NAME``), and the source's result carries the error; damaged video packets skipped mid-stream are
counted in it. SIGINT or SIGTERM stops the run the same way: the rows classified so far go to
``NAME.partial`` and the decoding processes are stopped. An existing CSV (or ``.partial``) is refused
unless ``overwrite``, and never replaced by an incomplete one.

Stage figures come from the run itself (the decoding thread's busy time, the models' time): nothing is
decoded twice unless ``profile_frames`` asks for the isolated measurement (:func:`measure_stages`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from foldedcnns.data.crop import Crop
from foldedcnns.errors import ConfigError
from foldedcnns.inference.csvout import PredictionCSV, output_paths
from foldedcnns.inference.decoding import (
    BackgroundBatches,
    DecodePlan,
    SourceInfo,
    ViewSpec,
    check_plan,
    decode_batches,
)
from foldedcnns.inference.predictor import Predictor
from foldedcnns.inference.report import PredictReport, SourceResult, StageThroughput
from foldedcnns.inference.rows import RowAssembler
from foldedcnns.inference.sources import STDIN, VIDEO, Source, check_task_match, resolve_inputs
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads

# Cores left to decoding (and the decoder's own threads) when the model runs on the CPU.
DECODE_CORES = 1
# Isolated stage measurement after a run (opt-in): at most this many frames are decoded again ...
PROFILE_FRAMES = 512
# ... and the model runs on them for at least this long.
PROFILE_MODEL_SECONDS = 0.5


@dataclass(frozen=True)
class Reader:
    """One model reading every frame: its ``predictor``, the ``crop`` it reads, and ``name`` (the prefix of
    its CSV columns in ``scrape``; None in ``predict``)."""

    predictor: Predictor
    crop: Crop | None = None
    name: str | None = None

    @property
    def view(self) -> ViewSpec:
        return ViewSpec(self.predictor.input_hw, self.crop)


@dataclass(frozen=True)
class RunOptions:
    """How a run treats its inputs and outputs: ``decode`` (decoders, fidelity levers), ``task_check`` (refuse
    labelled image folders of another task), ``overwrite`` existing CSVs, a ``progress`` bar, and
    ``profile_frames`` > 0 to decode that many frames again for isolated stage figures."""

    decode: DecodePlan = field(default_factory=DecodePlan)
    task_check: bool = True
    overwrite: bool = False
    progress: bool = False
    profile_frames: int = 0

    def __post_init__(self) -> None:
        frames = self.profile_frames
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise ConfigError(f"--profile-frames must be an integer >= 0, got {frames!r}")


def common_fold(readers: Sequence[Reader]) -> int:
    """F: the least common multiple of the models' folds, so a batch of a multiple of F frames fills every
    model's groups."""
    return math.lcm(*(r.predictor.fold for r in readers))


def decode_batch_size(readers: Sequence[Reader]) -> int:
    """Frames per decoded batch: the largest model batch, rounded up to a multiple of every model's fold (so
    each model's groups of f frames stay aligned on the start of the input)."""
    folds = common_fold(readers)
    largest = max(r.predictor.batch_size for r in readers)
    return -(-largest // folds) * folds


def classify_source(readers: Sequence[Reader], source: Source, output: str | Path, *, plan: DecodePlan | None = None,
                    progress: tqdm | None = None) -> SourceResult:
    """Classify every frame of ``source`` with every reader and write one CSV row per frame, in order.

    A decoding fault ends the input early: the rows decoded before it are written and the result's
    ``error`` says what went wrong. Anything else (a bug, Ctrl-C) leaves no file behind.
    """
    plan = DecodePlan() if plan is None else plan
    output = Path(output)
    started = time.perf_counter()
    model_seconds, error = 0.0, None
    batches = BackgroundBatches(source, [r.view for r in readers], decode_batch_size(readers), plan)
    fill = source.kind == VIDEO and not plan.options.every_frame
    assembler = RowAssembler(len(readers))
    names = None if readers[0].name is None else [str(r.name) for r in readers]
    interrupted: KeyboardInterrupt | None = None
    with PredictionCSV(output, source.key_column, [r.predictor.class_names for r in readers], names,
                       decoded=fill) as writer:
        stream = iter(batches)
        try:
            for batch in stream:
                if fill:
                    assembler.frames = batches.info.frames
                if batch.keys:
                    assembler.add_keys(batch.keys)
                    for number, (reader, images) in enumerate(zip(readers, batch.views, strict=True)):
                        step = reader.predictor.batch_size
                        for start in range(0, len(images), step):
                            model_started = time.perf_counter()
                            preds = reader.predictor.predict_batch(images[start:start + step])
                            model_seconds += time.perf_counter() - model_started
                            assembler.add(number, preds.labels.tolist(), preds.scores.tolist())
                    writer.write_rows(assembler.ready())
                    if progress is not None:
                        progress.update(len(batch.keys))
                if batch.error is not None:
                    error = str(batch.error)
                    writer.stopped_early()
            writer.write_rows(assembler.finish(complete=error is None))
        except KeyboardInterrupt as exc:  # SIGINT/SIGTERM: keep the rows classified so far in NAME.partial
            interrupted = exc
            writer.write_rows(assembler.ready())
            writer.stopped_early()
        finally:
            stream.close()  # stops the decoding thread and processes now
    if interrupted is not None:
        if writer.rows:
            interrupted.add_note(f"kept the {writer.rows} rows classified before it in {writer.output}")
        raise interrupted
    info = batches.info
    return SourceResult(source.name, source.kind, writer.output, writer.rows, time.perf_counter() - started,
                        batches.decode_seconds, model_seconds, error, info.stats.damaged_packets, info.decoded,
                        info.decoders)


def stages_from_run(results: Sequence[SourceResult]) -> StageThroughput | None:
    """Decode-limited and model-limited frames/s of a run, from its own timings (nothing decoded again)."""
    decoded = sum(r.decoded or r.rows for r in results)
    decode = sum(r.decode_seconds for r in results)
    model = sum(r.model_seconds for r in results)
    if decoded == 0 or decode <= 0 or model <= 0:
        return None
    return StageThroughput(decoded, decoded / decode, decoded / model)


def measure_stages(predictor: Predictor, sources: Sequence[Source], *, crop: Crop | None = None,
                   max_frames: int = PROFILE_FRAMES, min_model_seconds: float = PROFILE_MODEL_SECONDS,
                   plan: DecodePlan | None = None) -> StageThroughput | None:
    """Measure decode-only and model-only frames/s, one after the other, on up to ``max_frames`` frames.

    Decode-only decodes, crops and resizes the first frames of the sources, exactly as the pipeline
    does. Model-only classifies those frames in batches of the predictor's batch size (after one
    untimed warm-up batch) until ``min_model_seconds`` have passed. Returns None when nothing decodes.
    """
    plan = DecodePlan() if plan is None else plan
    frames: list[np.ndarray] = []
    decoded = 0
    view = ViewSpec(predictor.input_hw, crop)
    started = time.perf_counter()
    for source in sources:
        batches = decode_batches(source, [view], predictor.batch_size, plan, SourceInfo())
        for batch in batches:
            frames.append(batch.views[0][:max(0, max_frames - decoded)])
            decoded += len(batch.keys)
            if batch.error is not None or decoded >= max_frames:
                break
        batches.close()
        if decoded >= max_frames:
            break
    decode_seconds = time.perf_counter() - started
    if decoded == 0:
        return None
    images = np.concatenate(frames)
    chunks = [images[i:i + predictor.batch_size] for i in range(0, len(images), predictor.batch_size)]
    predictor.predict_batch(chunks[0])
    done, started = 0, time.perf_counter()
    while True:
        for chunk in chunks:
            predictor.predict_batch(chunk)
            done += len(chunk)
        elapsed = time.perf_counter() - started
        if elapsed >= min_model_seconds:
            break
    return StageThroughput(min(decoded, max_frames), min(decoded, max_frames) / decode_seconds, done / elapsed,
                           measured="alone, decoded again")


def model_threads(engine: Engine) -> int:
    """CPU threads for the model while a worker decodes: the engine's ``threads``, else all usable cores
    but :data:`DECODE_CORES`.

    PyTorch's intra-op threads wait for each other at every operator; when they share the cores with
    the decoder they stall, so the model leaves the decoder its own core. A GPU model needs only one.
    """
    if engine.threads is not None:
        return engine.threads
    if torch.device(engine.resolved().device).type != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - DECODE_CORES)


def decoder_threads(device: torch.device) -> int | None:
    """FFmpeg threads of a sequential decoder of small frames next to a model on ``device``:
    :data:`DECODE_CORES` when the model runs on the CPU (more threads would fight the model for its
    cores; docs/inference.md has the measured figures), else FFmpeg's default."""
    return DECODE_CORES if device.type == "cpu" else None


def plan_on(plan: DecodePlan, device: torch.device) -> DecodePlan:
    """``plan`` next to models on ``device``: a sequential decoder of small frames gets
    :func:`decoder_threads` unless the plan names its threads."""
    return plan if plan.threads is not None else dataclasses.replace(plan, threads=decoder_threads(device))


def plan_inputs(inputs: Sequence[str], out: str | Path, predictor: Predictor, crop: Crop | str | None,
                task_check: bool, overwrite: bool = False) -> tuple[Crop | None, list[Source], list[Path]]:
    """Parse the crop, resolve the inputs and their output CSVs (existing ones refused unless ``overwrite``),
    and check labelled folders fit the task. Standard input (``-``) has no name to derive a CSV name from:
    it must be the only input, with ``out`` a ``.csv`` file."""
    crop = Crop.parse(crop) if isinstance(crop, str) else crop
    sources = resolve_inputs(inputs)
    if any(s.name == STDIN for s in sources) and (len(sources) > 1 or Path(out).suffix.lower() != ".csv"):
        raise ConfigError(f"reading a video from stdin (-) writes one CSV: pass - as the only input and --out "
                          f"FILE.csv (got {len(sources)} inputs, --out {out})")
    outputs = output_paths(sources, out, overwrite)
    if task_check:
        for source in sources:
            check_task_match(source, predictor.config.task, predictor.input_hw, crop)
    return crop, sources, outputs


def classify_all(readers: Sequence[Reader], sources: Sequence[Source], outputs: Sequence[Path],
                 run: RunOptions) -> tuple[list[SourceResult], float]:
    """Classify every source into its CSV (PyTorch's threads set once, for the first reader's engine); returns
    the results and the wall time."""
    check_plan(sources, run.decode)
    plan = plan_on(run.decode, readers[0].predictor.device)
    total = None if any(s.kind == VIDEO for s in sources) else sum(len(s) for s in sources)
    results = []
    with torch_threads(readers[0].predictor.engine.pytorch_threads):  # set once here, so no batch changes it
        started = time.perf_counter()
        with tqdm(total=total, unit="frame", disable=not run.progress, dynamic_ncols=True) as bar:
            for source, output in zip(sources, outputs, strict=True):
                results.append(classify_source(readers, source, output, plan=plan, progress=bar))
        wall = time.perf_counter() - started
    return results, wall


def run_extra(results: Sequence[SourceResult], sources: Sequence[Source], threads: int) -> dict[str, Any]:
    """The report's extra lines: model threads, decoders used, frames decoded when fewer than rows, damage."""
    extra: dict[str, Any] = {"model_threads": threads}
    decoders = sorted({r.decoders for r in results if r.kind == VIDEO})
    if decoders:
        extra["decoders"] = decoders[0] if len(decoders) == 1 else decoders
    decoded, rows = sum(r.decoded or 0 for r in results), sum(r.rows for r in results)
    if decoded and decoded != rows:
        extra["frames_decoded"] = decoded
    damaged = sum(r.damaged_packets for r in results)
    if damaged:
        extra["damaged_packets"] = damaged
    return extra


def run_predict(checkpoint: str | Path | dict[str, Any], inputs: Sequence[str], out: str | Path, *,
                engine: Engine | None = None, batch_size: int | None = None, crop: Crop | str | None = None,
                run: RunOptions | None = None) -> PredictReport:
    """Predict every frame of every input into one CSV per input; see :func:`classify_source`.

    ``checkpoint``: a checkpoint (path or dict) or an OpenVINO IR ``.xml``. ``engine`` (default
    ``Engine()``, eager fp32 on the CPU) runs the model with :func:`model_threads` threads unless it names
    its own; the :class:`Predictor` is prepared under them, so engines that fix their thread count when
    they are prepared (openvino, onnxruntime, an IR) get the model's share of the cores. An int8 engine
    brings its calibration (:func:`~foldedcnns.inference.predictor.deployment_engine`). ``run``: decoding,
    task check, overwrite, progress and the opt-in isolated stage measurement (:class:`RunOptions`).
    """
    run = RunOptions() if run is None else run
    engine = (Engine() if engine is None else engine).resolved()
    threads = model_threads(engine)  # the engine prepares under these; PyTorch's own count is the predictor's rule
    predictor = Predictor(checkpoint, engine=engine.replace(threads=threads), batch_size=batch_size)
    crop, sources, outputs = plan_inputs(inputs, out, predictor, crop, run.task_check, run.overwrite)
    results, wall = classify_all([Reader(predictor, crop)], sources, outputs, run)
    extra = run_extra(results, sources, threads)
    stages = stages_from_run(results)
    if run.profile_frames:
        rereadable = [s for s in sources if not s.stream]
        with torch_threads(predictor.engine.pytorch_threads):
            stages = measure_stages(predictor, rereadable, crop=crop, max_frames=run.profile_frames,
                                    plan=plan_on(run.decode, predictor.device))
        if len(rereadable) < len(sources):
            names = ", ".join("stdin" if s.name == STDIN else s.name for s in sources if s.stream)
            extra["profile_skipped"] = (f"{names}: a stream (stdin or a FIFO) is read once; the decode-only and "
                                        "model-only figures leave it out")
    return PredictReport(results, predictor.fold, predictor.batch_size, predictor.backend, str(predictor.device),
                         wall, stages, extra=extra)
