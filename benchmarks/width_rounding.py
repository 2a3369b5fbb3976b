"""Does rounding the folded hidden widths up to a multiple of 16 help? A side-by-side check.

    .venv/bin/python benchmarks/width_rounding.py [TASK] [--backend compile] [--precision bf16] [--trials 5]

Builds TASK at f = 1 (width multiplier 1), f = 2 (sqrt 2, and 1.5: 32 -> 48 channels), f = 3 (sqrt 3, and
2: 32 -> 64) and f = 4 (2), prepares each on one backend and precision at B = 256 images, times them in
interleaved trials and prints median images/s and the ratio to f = 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from foldedcnns.benchmark.timing import folded_inputs
from foldedcnns.models import build_model
from foldedcnns.runtime.backends import get_backend
from foldedcnns.runtime.engine import Engine

VARIANTS = ((1, 1.0), (2, 2 ** 0.5), (2, 1.5), (3, 3 ** 0.5), (3, 2.0), (4, 2.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?", default="sot/timer3")
    parser.add_argument("--backend", default="compile")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.7)
    args = parser.parse_args()

    runs = {}
    for fold, multiplier in VARIANTS:
        net = build_model(args.task, fold=fold, multiplier=multiplier).eval()
        inputs = folded_inputs(args.batch_size, fold)
        x = torch.rand(inputs, *net.config.input_shape)
        prepared = get_backend(args.backend).prepare(net, x, Engine(args.backend, args.precision))
        width = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)][1]
        runs[(fold, multiplier, width)] = (prepared, prepared.prepare_input(x), inputs * fold)
    rates: dict[tuple[int, float, int], list[float]] = {k: [] for k in runs}
    for _ in range(args.trials):
        for key, (prepared, x, images) in runs.items():
            for _ in range(2):
                prepared.run(x)
            calls, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < args.seconds or calls == 0:
                prepared.run(x)
                calls += 1
            rates[key].append(calls * images / elapsed)
    base = statistics.median(rates[next(iter(rates))])
    print(f"{args.task}, {args.backend} {args.precision}, B = {args.batch_size}, medians of {args.trials} trials")
    for (fold, multiplier, width), values in rates.items():
        rate = statistics.median(values)
        print(f"f={fold} multiplier {multiplier:.3f} hidden width {width}: {rate:,.0f} images/s, "
              f"{rate / base:.2f}x f=1")


if __name__ == "__main__":
    main()
