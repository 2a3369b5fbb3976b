"""Prediction pipeline efficiency: end-to-end frames/s against decode-only and model-only frames/s.

    .venv/bin/python benchmarks/predict_pipeline.py CKPT [--sizes 320x240,1280x720] [--frames 2000] [--trials 3]

For each size the script draws a ``--frames``-frame H.264 clip (``frame_extraction.traffic_frames``: a
noisy static background with moving boxes, 1 Mbit/s), runs
:func:`foldedcnns.inference.pipeline.run_predict` on it ``--trials`` times (eager fp32 on the CPU, the
checkpoint's fold) and prints, per trial and as medians, the end-to-end frames/s, the decode-only and
model-only frames/s measured right after on the same frames, and their ratio (end-to-end over the
slower stage; the target is 0.8 or more).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from frame_extraction import traffic_frames  # this folder's clip generator

from foldedcnns.data.video import write_video
from foldedcnns.inference.pipeline import run_predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--sizes", default="320x240,1280x720")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fcnn-predict-"))
    print(f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; checkpoint {args.checkpoint}")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.lower().split("x"))
        video = work / f"clip_{width}x{height}.mp4"
        write_video(video, traffic_frames(args.frames, width, height, box=(width // 18, height // 18)),
                    options={"b": "1000k"})
        rows = []
        for trial in range(args.trials):
            report = run_predict(args.checkpoint, [str(video)], work / f"out_{size}_{trial}.csv",
                                 batch_size=args.batch_size)
            stages = report.stages
            rows.append((report.end_to_end_fps, stages.decode_fps, stages.model_fps, report.efficiency))
            print(f"{size} trial {trial}: {report.frames} rows, end-to-end {rows[-1][0]:.0f} frames/s, decode-only "
                  f"{rows[-1][1]:.0f}, model-only {rows[-1][2]:.0f}, ratio {rows[-1][3]:.2f}", flush=True)
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        print(f"{size} median: end-to-end {med[0]:.0f} frames/s, decode-only {med[1]:.0f}, model-only {med[2]:.0f}, "
              f"ratio {med[3]:.2f}")


if __name__ == "__main__":
    main()
