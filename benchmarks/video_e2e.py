"""Video end to end: every way of classifying a clip's frames against the decoder's own rate, in one run.

    .venv/bin/python benchmarks/video_e2e.py [CKPT] --doc docs/inference.md      # the measurement
    .venv/bin/python benchmarks/video_e2e.py --quick                             # does it run? (tiny clips)

Draws one H.264 clip per ``--sizes`` entry (``frame_extraction.traffic_frames``, ``--frames`` frames, libx264
with its default B-frames; 2 Mbit/s at 1280x720, 500 kbit/s at 320x240), exports CKPT (default the demo's
f = 4 lol/goldnumber-fraction model) to an OpenVINO IR, and measures frames/s of, per clip:

* ``decode-1`` / ``decode-ffmpeg``: PyAV decoding alone, no pixel conversion, one thread / FFmpeg's threads
  (``thread_type="AUTO"``): the decode limit that every other row is divided by;
* ``plain``: ``video_plain.py``, the script a user would write (PyAV with FFmpeg's threads, ``to_ndarray``
  RGB, NumPy crop and nearest resize, the IR on OpenVINO bf16 in batches of 256), as a subprocess;
* ``predict-eager`` / ``predict-openvino``: ``foldedcnns predict`` (eager fp32 / openvino bf16), each as a
  subprocess: its own end-to-end frames/s and the whole command's wall time;
* ``scrape-3``: ``run_scrape`` with 3 tasks (the checkpoint at 3 crops, openvino bf16), each task's columns
  checked against ``predict`` of that crop alone;
* ``decoders-1``, ``decoders-2`` (and ``decoders-N`` when ``auto`` picks another N), ``ffmpeg-threads``
  (one sequential decoder with FFmpeg's threads; at frames over 640x480 that is what ``decoders-1`` does):
  ``run_predict`` openvino bf16, rows checked identical to ``predict-openvino``;
* ``cache-build`` (``run_cache``: decode once into model inputs) and ``cache-predict`` (predict on it);
* ``ref``, ``key``, ``fast``: ``--decode-frames ref|key`` and ``--fast-decode``, each with its gain over
  full decoding (the ``auto`` decoders row) and its agreement (rows with the same label) with it.

Trials are interleaved (each trial measures every row of every clip, in a rotated order) and the table
gives medians. Writes ``--out``.md, .json and .csv (every trial), and with ``--doc`` the Markdown between
``<!-- video_e2e:begin -->`` and ``<!-- video_e2e:end -->`` of that file.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from frame_extraction import traffic_frames  # this folder's clip generator
from video_e2e_report import machine_lines, markdown, medians, replace_marked

from foldedcnns.benchmark.machine import cpu_model
from foldedcnns.data.video import SMALL_FRAME_PIXELS, DecodeOptions, write_video
from foldedcnns.data.video_segments import default_decoders
from foldedcnns.inference.decoding import DecodePlan
from foldedcnns.inference.export_openvino import export_openvino
from foldedcnns.inference.pipeline import RunOptions, run_predict
from foldedcnns.inference.predictor import Predictor
from foldedcnns.inference.scrape import run_cache, run_scrape
from foldedcnns.runtime.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
DEFAULT_CKPT = ROOT / "demo_out" / "runs" / "folded-f4" / "best.pt"
BITRATES = {(1280, 720): "2000k", (320, 240): "500k"}
BASE = (1280, 720)  # the frame size the crops below are given for; other sizes scale them
CROPS = [(600, 20, 52, 22), (80, 300, 52, 22), (1100, 640, 52, 22)]  # predict's crop first, then scrape's others
OPENVINO = ("openvino", "bf16")
FORMATS = {"wall_s": "{:.1f} s (whole command)", "decoded": "{}", "same_rows": "{}", "agreement": "{:.1%}"}
FIELDS = ["trial", "size", "name", "frames", "seconds", "fps", "wall_s", "decoded", "same_rows", "agreement"]


@dataclass
class Clip:
    width: int
    height: int
    frames: int
    bitrate: str
    path: Path
    crops: list[str]

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass
class Context:
    checkpoint: Path
    ir: Path
    fold: int
    input_hw: tuple[int, int]
    mean: Any
    std: Any
    work: Path

    def engine(self) -> Engine:
        return Engine(*OPENVINO)


def foldedcnns_command() -> list[str]:
    """The installed ``foldedcnns`` entry point (what a user runs), else ``python -m``."""
    script = Path(sys.executable).parent / "foldedcnns"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "foldedcnns.cli.main"]


def scaled_crop(crop: tuple[int, int, int, int], width: int, height: int) -> str:
    """``crop`` (given at :data:`BASE`) scaled to a ``width`` x ``height`` frame, at least 2x2 pixels, inside it."""
    sx, sy = width / BASE[0], height / BASE[1]
    w, h = max(2, round(crop[2] * sx)), max(2, round(crop[3] * sy))
    x, y = min(round(crop[0] * sx), width - w), min(round(crop[1] * sy), height - h)
    return f"{x},{y},{w},{h}"


def make_clip(size: str, frames: int, folder: Path) -> Clip:
    width, height = (int(v) for v in size.lower().split("x"))
    bitrate = BITRATES.get((width, height), f"{max(300, round(2000 * width * height / (1280 * 720)))}k")
    path = folder / f"traffic_{width}x{height}_{frames}_{bitrate}.mp4"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        write_video(path, traffic_frames(frames, width, height, box=(max(2, width // 18), max(2, height // 18))),
                    options={"b": bitrate})
        print(f"drew {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.0f} s",
              flush=True)
    return Clip(width, height, frames, bitrate, path, [scaled_crop(c, width, height) for c in CROPS])


# --- the measurements: each returns {"frames", "seconds", "fps"} and optionally "wall_s", "decoded", "output"


def decode_only(clip: Clip, threads: int | None) -> dict[str, Any]:
    """PyAV decoding alone (no pixel conversion): one thread, or FFmpeg's threads (None)."""
    started = time.perf_counter()
    container = av.open(str(clip.path))
    stream = container.streams.video[0]
    if threads is None:
        stream.thread_type = "AUTO"
    else:
        stream.thread_count = threads
    frames = sum(1 for _ in container.decode(stream))
    container.close()
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds}


def run_command(command: list[str]) -> tuple[dict[str, Any], float]:
    """Run ``command``; its last stdout JSON document, and the whole command's wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    text = done.stdout.strip()
    return json.loads(text[text.find("{"):] if text.startswith("{") else text.splitlines()[-1]), wall


def plain_script(clip: Clip, ctx: Context, out: Path) -> dict[str, Any]:
    labels = out.with_suffix(".npy")
    command = [sys.executable, str(HERE / "video_plain.py"), str(ctx.ir), str(clip.path), "--crop", clip.crops[0],
               "--size", f"{ctx.input_hw[0]}x{ctx.input_hw[1]}", "--fold", str(ctx.fold), "--out", str(labels),
               "--precision", OPENVINO[1]]
    if ctx.mean is not None:
        command += ["--mean", ",".join(map(str, ctx.mean)), "--std", ",".join(map(str, ctx.std))]
    got, wall = run_command(command)
    return {"frames": got["frames"], "seconds": got["seconds"], "fps": got["frames"] / got["seconds"],
            "wall_s": wall, "labels": labels}


def predict_command(clip: Clip, ctx: Context, out: Path, engine: tuple[str, str]) -> dict[str, Any]:
    command = [*foldedcnns_command(), "predict", str(ctx.checkpoint), str(clip.path), "--out", str(out), "--crop",
               clip.crops[0], "--backend", engine[0], "--precision", engine[1], "--overwrite", "--no-progress",
               "--json"]
    got, wall = run_command(command)
    return {"frames": got["frames"], "seconds": got["wall_seconds"], "fps": got["end_to_end_fps"], "wall_s": wall,
            "decoded": sum(r.get("decoded") or 0 for r in got["results"]), "output": out}


def predict_api(clip: Clip, ctx: Context, out: Path, plan: DecodePlan, source: Path | None = None) -> dict[str, Any]:
    report = run_predict(ctx.checkpoint, [str(source or clip.path)], out, engine=ctx.engine(), crop=clip.crops[0],
                         run=RunOptions(decode=plan, overwrite=True))
    report.raise_for_errors()
    return {"frames": report.frames, "seconds": report.wall_seconds, "fps": report.end_to_end_fps,
            "decoded": sum(r.decoded or 0 for r in report.results), "output": out}


def write_spec(clip: Clip, ctx: Context) -> Path:
    spec = ctx.work / f"scrape_{clip.size}.json"
    tasks = [{"name": f"t{i}", "checkpoint": str(ctx.checkpoint), "crop": crop, "backend": OPENVINO[0],
              "precision": OPENVINO[1]} for i, crop in enumerate(clip.crops)]
    spec.write_text(json.dumps({"tasks": tasks}, indent=1), encoding="utf-8")
    return spec


def scrape(clip: Clip, ctx: Context, out: Path) -> dict[str, Any]:
    report = run_scrape(write_spec(clip, ctx), [str(clip.path)], out, engine=ctx.engine(),
                        run=RunOptions(overwrite=True))
    report.raise_for_errors()
    return {"frames": report.frames, "seconds": report.wall_seconds, "fps": report.end_to_end_fps,
            "decoded": sum(r.decoded or 0 for r in report.results), "output": Path(report.results[0].output)}


def cache_build(clip: Clip, ctx: Context, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = run_cache(str(clip.path), out, checkpoint=ctx.checkpoint, crop=clip.crops[0])
    seconds = time.perf_counter() - started
    return {"frames": result["frames"], "seconds": seconds, "fps": result["frames"] / seconds}


def measurements(clip: Clip, ctx: Context) -> dict[str, Callable[[Path], dict[str, Any]]]:
    """name -> measure(trial folder) of every row of ``clip`` (``cache-predict`` runs right after ``cache-build``)."""
    auto = default_decoders(clip.width, clip.height)
    full = DecodeOptions()
    rows: dict[str, Callable[[Path], dict[str, Any]]] = {
        "decode-1": lambda d: decode_only(clip, 1),
        "decode-ffmpeg": lambda d: decode_only(clip, None),
        "plain": lambda d: plain_script(clip, ctx, d / "plain"),
        "predict-eager": lambda d: predict_command(clip, ctx, d / "eager.csv", ("eager", "fp32")),
        "predict-openvino": lambda d: predict_command(clip, ctx, d / "openvino.csv", OPENVINO),
        "scrape-3": lambda d: scrape(clip, ctx, d / "scrape"),
    }
    for n in sorted({1, 2, auto}):
        rows[f"decoders-{n}"] = lambda d, n=n: predict_api(clip, ctx, d / f"decoders{n}.csv", DecodePlan(n, full))
    if clip.width * clip.height <= SMALL_FRAME_PIXELS:  # larger frames: decoders-1 already uses FFmpeg's threads
        rows["ffmpeg-threads"] = lambda d: predict_api(clip, ctx, d / "ffmpeg.csv", DecodePlan(1, full, threads=0))
    rows["cache-build"] = lambda d: cache_build(clip, ctx, d / "cache")
    for lever, options in (("ref", DecodeOptions("ref")), ("key", DecodeOptions("key")),
                           ("fast", DecodeOptions(fast=True))):
        rows[lever] = lambda d, o=options, lever=lever: predict_api(clip, ctx, d / f"{lever}.csv", DecodePlan(None, o))
    return rows


# --- checking rows


def read_rows(path: Path) -> list[list[str]]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def agreement(labels: list[str] | np.ndarray, reference: list[str]) -> float:
    same = sum(str(a) == str(b) for a, b in zip(labels, reference, strict=False))
    return same / max(len(reference), 1)


def check_trial(clip: Clip, results: dict[str, dict[str, Any]], references: list[list[list[str]]],
                folder: Path) -> None:
    """Fill in ``same_rows`` / ``agreement`` of each result against ``predict-openvino``'s CSV."""
    full = read_rows(results["predict-openvino"]["output"])
    labels = [row[1] for row in full[1:]]
    results["predict-openvino"]["same_rows"] = full == references[0]
    for name, result in results.items():
        if name.startswith(("decoders-", "ffmpeg-", "cache-predict")):
            result["same_rows"] = read_rows(result["output"]) == full
        elif name in ("ref", "key", "fast", "predict-eager"):
            rows = read_rows(result["output"])
            result["agreement"] = agreement([row[1] for row in rows[1:]], labels)
        elif name == "plain":
            result["agreement"] = agreement(np.load(result["labels"]).tolist(), labels)
        elif name == "scrape-3":
            rows = read_rows(result["output"])
            same = len(rows) == len(full)
            for i, reference in enumerate(references):  # task i: frame, then its 3 columns
                same = same and [[row[0], *row[1 + 3 * i:4 + 3 * i]] for row in rows[1:]] == reference[1:]
            result["same_rows"] = same
    shutil.rmtree(folder / "cache", ignore_errors=True)


def scrape_references(clip: Clip, ctx: Context) -> list[list[list[str]]]:
    """``predict`` rows of each scrape task's crop alone (openvino bf16), made once per clip (and a warm-up)."""
    refs = []
    for i, crop in enumerate(clip.crops):
        out = ctx.work / f"reference_{clip.size}_{i}.csv"
        run_predict(ctx.checkpoint, [str(clip.path)], out, engine=ctx.engine(), crop=crop,
                    run=RunOptions(overwrite=True)).raise_for_errors()
        refs.append(read_rows(out))
    return refs


# --- the run


def run_trial(trial: int, clips: list[Clip], ctx: Context, refs: dict[str, list], rows: list[dict[str, Any]]) -> None:
    order = clips if trial % 2 == 0 else clips[::-1]
    for clip in order:
        folder = ctx.work / f"trial{trial}" / clip.size
        folder.mkdir(parents=True, exist_ok=True)
        todo = measurements(clip, ctx)
        names = list(todo)
        shift = trial % len(names)
        results: dict[str, dict[str, Any]] = {}
        for name in names[shift:] + names[:shift]:
            results[name] = todo[name](folder)
            if name == "cache-build":
                results["cache-predict"] = predict_api(clip, ctx, folder / "cache_predict.csv", DecodePlan(),
                                                       source=folder / "cache")
        check_trial(clip, results, refs[clip.size], folder)
        at = names.index("cache-build") + 1
        for name in [*names[:at], "cache-predict", *names[at:]]:
            got = results[name]
            row = {"trial": trial, "size": clip.size, "name": name, **{k: got.get(k) for k in FIELDS[3:]}}
            rows.append(row)
            extra = "".join(f", {k} {FORMATS[k].format(row[k])}" for k in FORMATS if row[k] is not None)
            print(f"trial {trial} {clip.size} {name:16s} {row['fps']:9,.0f} frames/s ({row['frames']} frames in "
                  f"{row['seconds']:.2f} s{extra})", flush=True)


def lscpu() -> dict[str, Any]:
    """CPU model name and count from ``lscpu`` (else /proc/cpuinfo), and the load averages."""
    info: dict[str, Any] = {"cpu": None, "cpus": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            elif key.strip() == "CPU(s)":
                info["cpus"] = int(value.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    if info["cpu"] is None:
        info["cpu"] = cpu_model()
    info["load_start"] = list(os.getloadavg())
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--sizes", default="1280x720,320x240")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default 3000; --quick: 300)")
    parser.add_argument("--trials", type=int, default=None, help="interleaved trials (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="tiny clips, one trial, results to a temporary folder")
    parser.add_argument("--clips", type=Path, default=None, help="keep the generated clips here and reuse them")
    parser.add_argument("--out", type=Path, default=None,
                        help="writes OUT.md, OUT.json, OUT.csv (default benchmarks/results/video_e2e_cpu)")
    parser.add_argument("--doc", type=Path, default=None, help="also write the Markdown into this file's section")
    args = parser.parse_args()
    frames = args.frames or (300 if args.quick else 3000)
    trials = args.trials or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="fcnn-video-e2e-"))
    out = args.out or (work / "video_e2e" if args.quick else ROOT / "benchmarks" / "results" / "video_e2e_cpu")
    machine = lscpu()
    print("\n".join(machine_lines(machine)) + f"\ncheckpoint {args.checkpoint}; work in {work}", flush=True)
    started = time.perf_counter()
    try:
        clips = [make_clip(size, frames, args.clips or work) for size in args.sizes.split(",") if size]
        predictor = Predictor(args.checkpoint)
        task = predictor.config.task
        ir = export_openvino(args.checkpoint, work / "model.xml", engine=Engine("openvino")).path
        ctx = Context(args.checkpoint.resolve(), Path(ir), predictor.fold, predictor.input_hw, task.mean, task.std,
                      work)
        refs = {clip.size: scrape_references(clip, ctx) for clip in clips}
        rows: list[dict[str, Any]] = []
        for trial in range(trials):
            run_trial(trial, clips, ctx, refs, rows)
        machine["load_end"] = list(os.getloadavg())
        table = medians(rows)
        shown = args.checkpoint.resolve()
        shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
        settings = {"checkpoint": str(shown), "fold": ctx.fold, "input_hw": list(ctx.input_hw),
                    "trials": trials, "seconds": round(time.perf_counter() - started, 1),
                    "clips": [{"size": c.size, "frames": c.frames, "bitrate": c.bitrate, "crops": c.crops,
                               "bytes": c.path.stat().st_size, "default_decoders": default_decoders(c.width, c.height)}
                              for c in clips]}
        text, checks = markdown(table, settings, machine)
        print("\n" + text)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text("# Video end to end (CPU)\n\n" + text + "\n", encoding="utf-8")
        out.with_suffix(".json").write_text(json.dumps({"machine": machine, "settings": settings, "medians": table,
                                                        "checks": checks, "trials": rows}, indent=1, default=str)
                                            + "\n", encoding="utf-8")
        with out.with_suffix(".csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        if args.doc is not None:
            args.doc.write_text(replace_marked(args.doc.read_text(encoding="utf-8"), "video_e2e", text),
                                encoding="utf-8")
        print(f"wrote {out.with_suffix('.md')}, .json, .csv" + (f" and {args.doc}" if args.doc else "")
              + f" in {time.perf_counter() - started:.0f} s")
    finally:
        if not args.quick or args.out is not None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
