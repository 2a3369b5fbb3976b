"""Why ``--decoders auto`` keeps one decoder for small frames: 1 vs 2 decoding processes at 320x240, eager and
openvino, medians of interleaved trials.

    .venv/bin/python benchmarks/decoders_small.py CLIP [--ckpt demo_out/runs/folded-f4/best.pt] [--trials 3]

CLIP is a 320x240 H.264 clip, e.g. the one ``benchmarks/video_e2e.py --clips DIR`` draws
(``DIR/traffic_320x240_3000_500k.mp4``). A second decoding process helps only when the model leaves a core
free: with eager PyTorch on one thread the model is the bottleneck and the extra process takes its CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from foldedcnns.inference.decoding import DecodePlan
from foldedcnns.inference.pipeline import RunOptions, run_predict
from foldedcnns.runtime.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip")
    parser.add_argument("--ckpt", default="demo_out/runs/folded-f4/best.pt")
    parser.add_argument("--crop", default="150,7,13,7")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="fcnn-decoders-")) / "rows.csv"
    print(f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; {args.clip}")
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.trials):
        for backend, precision in (("eager", "fp32"), ("openvino", "bf16")):
            for decoders in (1, 2):
                report = run_predict(args.ckpt, [args.clip], out, engine=Engine(backend, precision), crop=args.crop,
                                     run=RunOptions(DecodePlan(decoders), overwrite=True))
                results.setdefault((backend, decoders), []).append(report.end_to_end_fps)
    print("| engine | --decoders | frames/s (median) | trials |\n|---|---|---|---|")
    for (backend, decoders), values in results.items():
        print(f"| {backend} | {decoders} | {statistics.median(values):,.0f} | "
              f"{', '.join(f'{v:,.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
