"""Where a one-PNG request's time goes in the native server: cProfile of the event loop under load, and spans.

    .venv/bin/python benchmarks/serve_profile.py                       # c=8, 5 s, eager fp32, f = 4
    .venv/bin/python benchmarks/serve_profile.py --concurrency 64 --seconds 10 --top 40

Runs ``foldedcnns serve``'s server (:func:`foldedcnns.serving.http.make_server` over
:func:`foldedcnns.serving.service.build_service`) in this process, with cProfile on the event-loop thread
(HTTP parsing, body read, routing, the batcher, JSON) and ``time.perf_counter`` spans around the work that
runs on other threads (the model, and the whole request handler), while :func:`foldedcnns.serving.loadtest.run_level`
keeps ``--concurrency`` one-PNG requests in flight from another process. Prints the spans per request (mean
microseconds) and the event loop's top functions by own time. The profiler slows the loop: read the shares,
not the rates. The findings are in docs/serving.md ("Where the time goes").
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

from foldedcnns.inference.predictor import Predictor
from foldedcnns.models import build_model
from foldedcnns.runtime import Engine
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.serving.http import make_server
from foldedcnns.serving.loadtest import build_bodies, encode_requests, image_paths, run_level
from foldedcnns.serving.service import Service, build_service

TASK = "lol/goldnumber-fraction"
SPANS: dict[str, list[float]] = defaultdict(list)


def timed(name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPANS[name].append(time.perf_counter() - start)
    return wrapper


def atimed(name: str, fn):
    async def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            SPANS[name].append(time.perf_counter() - start)
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fcnn-profile-"))
    subprocess.run([sys.executable, "-m", "foldedcnns.cli.main", "data", "synth", TASK, str(work / "synth"),
                    "--per-class", "10", "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    checkpoint = save_checkpoint(work / "f.pt", make_checkpoint(build_model(TASK, fold=args.fold)))
    Predictor.predict_batch = timed("model (predict_batch, model thread)", Predictor.predict_batch)
    Service.predict = atimed("request handler (Service.predict, all of it)", Service.predict)
    service = build_service(checkpoint, engine=Engine(args.backend, args.precision, threads=args.threads))
    server = make_server(service, port=0)
    url: list[str] = []

    def load() -> None:
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url.append(f"http://127.0.0.1:{port}")
        requests = encode_requests(url[0], build_bodies(image_paths(work / "synth" / "test"), 1))
        SPANS.clear()
        level = run_level(url[0], requests, args.concurrency, 1, args.seconds, warmup_s=0.0, processes=1)
        url.append(f"{level.requests_per_s:,.0f} requests/s (under the profiler), p50 {level.p50_ms:.2f} ms, "
                   f"client {level.client_cpu_cores:.2f} cores, {level.statuses}")
        server.should_exit = True

    threading.Thread(target=load, daemon=True).start()
    profile = cProfile.Profile()
    profile.enable()
    server.run()
    profile.disable()
    requests = max(1, len(SPANS.get("request handler (Service.predict, all of it)", [])))
    print(f"c={args.concurrency}, {args.seconds:g} s: {url[-1]}")
    print(f"spans per request (mean over {requests} requests):")
    for name, values in SPANS.items():
        print(f"  {name:48s} {1e6 * sum(values) / requests:8.1f} us  ({len(values)} calls)")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
