"""Does the openvino backend add overhead of its own? It against a plain OpenVINO script, in one run.

    .venv/bin/python benchmarks/openvino_overhead.py [--tasks T ...] [--folds 1,4] [--batch-sizes 256,1024]
        [--precisions bf16,int8] [--threads N] [--trials 5] [--seconds 1.0] [--out FILE.csv]

For each task, fold, batch size and precision the same seeded model (``build_model(task, fold=f)``) runs
three ways, timed in interleaved trials with the benchmark's protocol (``time_calls``: warm-up, then
calls of one fixed random folded input for ``--seconds``):

* ``backend``: ``foldedcnns``' ``openvino`` backend, ``Prepared.run`` (what ``bench`` times);
* ``plain``: a plain OpenVINO script: ``ov.convert_model`` + ``nncf.quantize`` (int8, 32 random inputs)
  + ``reshape`` to the static batch + ``core.compile_model`` with the same hints + one ``InferRequest``
  and ``request.infer(x)`` in a loop (input copied, the documented default);
* ``plain-call``: the same compiled model called as ``compiled(x)`` (OpenVINO's own request);
* ``streams``: the ``openvino-streams`` backend (throughput hint, the call split over one stream per thread);
* ``plain-streams``: the plain script's way to do that: the same graph compiled with the throughput hint
  and ``NUM_STREAMS`` at a static batch of one part, an ``ov.AsyncInferQueue`` with one job per part,
  ``start_async`` per part and ``wait_all``.

It prints median images/s per way, ``backend / plain`` (the Done-when of issue 11 asks for >= 0.90),
``streams / plain-streams`` (the same check for the streams backend) and ``streams / backend`` (which
way of running OpenVINO wins here).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from foldedcnns.benchmark.timing import folded_inputs, images_per_call, time_calls
from foldedcnns.models import build_model
from foldedcnns.runtime.backends import get_backend, is_quantized
from foldedcnns.runtime.backends.openvino import streams_for
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads

HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
WAYS = ("backend", "plain", "plain-call", "streams", "plain-streams")


def plain_openvino(model: torch.nn.Module, x: torch.Tensor, precision: str, threads: int, streams: int = 0) -> Any:
    """What a user writes: convert, (quantize), compile with the hints, no foldedcnns code; ``streams``:
    the throughput hint with that many streams, at a static batch of ``len(x) // streams``."""
    import nncf
    import openvino as ov

    core = ov.Core()
    ov_model = ov.convert_model(model, example_input=x[:1], input=[ov.PartialShape([-1, *x.shape[1:]])])
    hint = precision
    if is_quantized(precision):
        rng = np.random.default_rng(0)
        calibration = [rng.random((1, *x.shape[1:]), dtype=np.float32) for _ in range(32)]
        ov_model = nncf.quantize(ov_model, nncf.Dataset(calibration), subset_size=len(calibration))
        hint = "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "fp32"
    ov_model.reshape([len(x) // max(streams, 1), *x.shape[1:]])  # static, one part's batch, as the backends do
    config = {"INFERENCE_PRECISION_HINT": HINTS[hint], "PERFORMANCE_HINT": "THROUGHPUT" if streams else "LATENCY",
              "INFERENCE_NUM_THREADS": threads}
    if streams:
        config["NUM_STREAMS"] = streams
    return core.compile_model(ov_model, "CPU", config)


def plain_streams(compiled: Any, parts: int) -> Callable[[np.ndarray], None]:
    """An ``AsyncInferQueue`` call of ``parts`` equal slices of the input."""
    import openvino as ov

    queue = ov.AsyncInferQueue(compiled, parts)

    def call(a: np.ndarray) -> None:
        for part in np.split(a, parts):
            queue.start_async({0: part}, share_inputs=True)
        queue.wait_all()

    return call  # the closure keeps the queue alive


def runners(task: str, fold: int, batch: int, precision: str, threads: int) -> dict[str, tuple[Callable, Any]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(task, fold=fold).eval()
    x = torch.rand(folded_inputs(batch, fold), *model.config.input_shape, generator=torch.Generator().manual_seed(0))
    prepared = get_backend("openvino").prepare(model, x, Engine("openvino", precision))
    streams = get_backend("openvino-streams").prepare(model, x, Engine("openvino-streams", precision))
    parts = streams_for(len(x), threads)
    compiled = plain_openvino(model, x, precision, threads)
    request = compiled.create_infer_request()
    feed = x.numpy()
    return {"backend": (prepared.run, prepared.prepare_input(x)),
            "plain": (lambda a: request.infer({0: a}), feed),
            "plain-call": (lambda a: compiled(a), feed),
            "streams": (streams.run, streams.prepare_input(x)),
            "plain-streams": (plain_streams(plain_openvino(model, x, precision, threads, parts), parts), feed)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["lol/goldnumber-fraction", "apex/squad_count_v2",
                                                      "noscope/coral"])
    parser.add_argument("--folds", default="1,4")
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--threads", type=int, default=None, help="default: PyTorch's (one per core)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="CSV of every timing")
    args = parser.parse_args()
    folds = [int(v) for v in args.folds.split(",")]
    batches = [int(v) for v in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")
    with torch_threads(args.threads):
        threads = torch.get_num_threads()
        configs = [(t, f, b, p) for t in args.tasks for b in batches for p in precisions for f in folds]
        prepared = {}
        for c in configs:
            print(f"preparing {c}", file=sys.stderr)
            prepared[c] = runners(*c, threads)
        rows = []
        for trial in range(1, args.trials + 1):
            for c, ways in prepared.items():
                for way in WAYS:
                    run, x = ways[way]
                    timing = time_calls(run, x, images_per_call(c[2], c[1]), warmup=args.warmup, seconds=args.seconds)
                    rows.append({"task": c[0], "fold": c[1], "batch": c[2], "precision": c[3], "way": way,
                                 "trial": trial, "images_per_s": timing.throughput})
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"{'task':26s} {'f':>2s} {'B':>5s} {'prec':5s} " + " ".join(f"{w:>13s}" for w in WAYS)
          + "  backend/plain  streams/plain-streams  streams/backend")
    worst = {"backend/plain": float("inf"), "streams/plain-streams": float("inf")}
    for c in configs:
        med = {w: statistics.median(r["images_per_s"] for r in rows
                                    if (r["task"], r["fold"], r["batch"], r["precision"], r["way"]) == (*c, w))
               for w in WAYS}
        ratios = {"backend/plain": med["backend"] / med["plain"],
                  "streams/plain-streams": med["streams"] / med["plain-streams"]}
        for name, ratio in ratios.items():
            worst[name] = min(worst[name], ratio)
        print(f"{c[0]:26s} {c[1]:2d} {c[2]:5d} {c[3]:5s} " + " ".join(f"{med[w]:13,.0f}" for w in WAYS)
              + f"  {ratios['backend/plain']:13.3f}  {ratios['streams/plain-streams']:21.3f}"
              + f"  {med['streams'] / med['backend']:15.3f}")
    print(f"worst backend/plain: {worst['backend/plain']:.3f}, worst streams/plain-streams: "
          f"{worst['streams/plain-streams']:.3f} ({threads} threads, {args.trials} interleaved trials of "
          f"{args.seconds:g} s each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
