"""Frame extraction speed: a 600-frame 1280x720 H.264 clip to 50x50 PNGs (`foldedcnns data noscope-frames`).

    .venv/bin/python benchmarks/frame_extraction.py [--trials 3] [--bitrate 2000k] [--keep DIR]

The clip is drawn here, deterministically: a fixed traffic-camera-like background (gradients, a grid
of tiles, sensor noise) with five moving boxes, encoded with x264 at a fixed bitrate (default
2 Mbit/s, typical for a 720p surveillance stream). Each trial runs
:func:`foldedcnns.data.noscope.extract_frames` into a fresh folder; the script prints frames/s per
trial (wall) and the CPU milliseconds per frame, then the medians. Decode-only figures
(:func:`foldedcnns.data.video.iter_frames`, resized, no PNG) are printed next to them.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from foldedcnns.data.noscope import extract_frames
from foldedcnns.data.video import iter_frames, write_video

WIDTH, HEIGHT, FRAMES, FPS = 1280, 720, 600, 30
BOXES = 5


def traffic_frames(frames: int = FRAMES, width: int = WIDTH, height: int = HEIGHT, seed: int = 0,
                   box: tuple[int, int] = (70, 40)) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 frames: a static noisy background with ``BOXES`` moving boxes of half-size ``box``
    (x, y) pixels. Also used by ``predict_pipeline.py``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // width, yy * 255 // height, ((xx // 64 + yy // 64) % 2) * 120 + 60], -1)
    background = (background + rng.integers(-20, 20, background.shape)).clip(0, 255).astype(np.int16)
    for i in range(frames):
        frame = background.copy()
        for k in range(BOXES):
            cx, cy = (100 * k + 5 * i * (k + 1)) % width, (80 + 120 * k + 2 * i) % height
            frame[max(cy - box[1], 0):cy + box[1], max(cx - box[0], 0):cx + box[0]] = (40 * k, 200, 255 - 40 * k)
        frame += rng.integers(-2, 3, frame.shape, dtype=np.int16)
        yield frame.clip(0, 255).astype(np.uint8)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(job) -> tuple[int, float, float]:
    """Run ``job() -> frames``; return (frames, wall seconds, CPU seconds of this process)."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    count = job()
    return count, time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--bitrate", default="2000k", help="x264 bitrate of the generated clip")
    parser.add_argument("--video", help="use this video instead of generating one")
    parser.add_argument("--keep", help="folder to keep the generated clip in")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fcnn-extract-"))
    try:
        video = Path(args.video) if args.video else Path(args.keep or work) / f"traffic_720p_{args.bitrate}.mp4"
        if not video.is_file():
            video.parent.mkdir(parents=True, exist_ok=True)
            write_video(video, traffic_frames(), fps=FPS, options={"b": args.bitrate})
        size_mb = video.stat().st_size / 1e6
        print(f"video {video}: {size_mb:.1f} MB; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
        rows = {"extract": [], "decode": []}
        for trial in range(args.trials):
            out = work / f"frames_{trial}"
            n, wall, cpu = timed(lambda out=out: extract_frames(video, out, size=50, progress=False))
            rows["extract"].append((n / wall, cpu / n * 1e3))
            n, wall, cpu = timed(lambda: sum(1 for _ in iter_frames(video, size=50)))
            rows["decode"].append((n / wall, cpu / n * 1e3))
            shutil.rmtree(out, ignore_errors=True)
            (ext_fps, ext_cpu), (dec_fps, dec_cpu) = rows["extract"][-1], rows["decode"][-1]
            print(f"trial {trial}: extract {ext_fps:.0f} frames/s ({ext_cpu:.2f} ms CPU/frame), "
                  f"decode+resize only {dec_fps:.0f} frames/s ({dec_cpu:.2f} ms CPU/frame)", flush=True)
        for name, values in rows.items():
            fps = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            print(f"median {name}: {fps:.0f} frames/s wall, {cpu:.2f} ms CPU per frame ({n} frames)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
