"""Online serving on loopback: the native server and Ray Serve at f = 1 and f = 4, against `bench`'s offline figure.

    .venv/bin/python benchmarks/serve.py                      # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/serve.py --no-ray --seconds 1 # a quick look

For lol/goldnumber-fraction (seeded random weights: throughput does not depend on them) at each fold
of ``--folds`` it starts ``foldedcnns serve`` (eager fp32 on the CPU, N = ``--batch-images``, D = 5 ms
by default), runs :func:`foldedcnns.serving.loadtest` on it (single-image PNG requests at
``--single-concurrency``, ``--batch-images``-image ``.npy`` requests at ``--batch-concurrency``), stops it
with SIGTERM, does the same on a local Ray Serve deployment (one replica with every CPU), and times
the offline model with ``bench``'s protocol (:func:`foldedcnns.benchmark.runner.run_benchmark`, the same
backend and batch size). The load generator runs on the same machine as the server and takes CPU
from it: the figures are what one 2-core box does end to end, not the server's ceiling.

It prints one line per level and the two checks of issue 12 (f = 4 server with 64-image requests at
>= 50 % of the offline images/s; native >= Ray Serve at every level), writes the raw results as
JSON (``--json``) and the generated part of ``--doc`` (default docs/serving.md) between
``<!-- serve-bench:start/end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from docs_report import replace_section  # this folder's docs helpers

from foldedcnns.benchmark.machine import machine_info
from foldedcnns.benchmark.runner import BenchConfig, run_benchmark
from foldedcnns.models import build_model
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.serving import loadtest

TASK = "lol/goldnumber-fraction"
ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"^foldedcnns: serving .*(http://[\d.]+:\d+)")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "foldedcnns.cli.main", *args]


def start_server(args: list[str], timeout: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cli("serve", *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            continue
        match = READY.search(seen[-1])
        if match:
            return proc, match.group(1)
    stop_server(proc)
    raise SystemExit("server did not start:\n" + "".join(seen[-20:]))


def stop_server(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=120)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the server left (Ray's raylet and workers)
    return proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(server: str, fold: int, url: str, images: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    plan = [(c, 1, "image") for c in args.single_concurrency] + \
           [(c, args.batch_images, args.batch_payload) for c in args.batch_concurrency]
    for concurrency, per_request, payload in plan:
        (level,) = loadtest(url, images, concurrency=[concurrency], per_request=per_request, seconds=args.seconds,
                            warmup_s=args.warmup, payload=payload)
        row = {**level.to_dict(), "server_name": server, "fold": fold, "payload": payload}
        rows.append(row)
        errors = {k: v for k, v in level.statuses.items() if k != "200"}
        print(f"{server:6s} f={fold} c={concurrency:3d} k={per_request:3d}: {level.images_per_s:9.1f} images/s "
              f"{level.requests_per_s:8.1f} req/s  p50 {level.p50_ms or 0:7.1f} ms  p99 {level.p99_ms or 0:7.1f} ms"
              f"{'  errors ' + str(errors) if errors else ''}", flush=True)
    return rows


def offline(folds: list[int], batch: int, seconds: float, trials: int) -> dict[int, float]:
    config = BenchConfig(tasks=(TASK,), folds=tuple(folds), batch_sizes=(batch,), backends=("eager",),
                         seconds=seconds, trials=trials, peak_seconds=0)
    records = run_benchmark(config).records
    return {f: statistics.median(r.throughput for r in records if r.fold == f) for f in folds}


def markdown(rows: list[dict[str, Any]], bench: dict[int, float], checks: list[str], args: argparse.Namespace,
             machine: dict[str, Any]) -> str:
    lines = [f"Measured by `benchmarks/serve.py` on {machine.get('cpu')} ({machine.get('logical_cpus')} logical "
             f"CPUs; the load generator on the same machine), {TASK}, eager fp32, N = {args.batch_images}, "
             f"D = {args.max_delay_ms:g} ms, {args.seconds:g} s per level after {args.warmup:g} s of warm-up. "
             "Images/s count answered (200) images; latency is the client's.", "",
             "| server | f | images/request | concurrency | images/s | requests/s | p50 ms | p95 ms | p99 ms "
             "| mean batch | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items() if k != "200") or "-"
        batch = r["server"].get("batch_images")  # the native server's /metrics; Ray Serve has none here
        lines.append(f"| {r['server_name']} | {r['fold']} | {r['images_per_request']} | {r['concurrency']} | "
                     f"{r['images_per_s']:,.0f} | {r['requests_per_s']:,.0f} | {_ms(r['p50_ms'])} | "
                     f"{_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | {'-' if batch is None else f'{batch:.1f}'} | "
                     f"{errors} |")
    lines += ["", "Offline (`bench`'s protocol, same backend, batch of "
              f"{args.batch_images} images): " + ", ".join(f"f = {f}: {v:,.0f} images/s" for f, v in bench.items()),
              "", *[f"- {c}" for c in checks]]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def parse_levels(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", default="1,4")
    parser.add_argument("--per-class", type=int, default=40, help="synthetic images per class (test split is 15 %%)")
    parser.add_argument("--single-concurrency", type=parse_levels, default=[1, 8, 64])
    parser.add_argument("--batch-concurrency", type=parse_levels, default=[4])
    parser.add_argument("--batch-images", type=int, default=64, help="N, and the images of a batch request")
    parser.add_argument("--batch-payload", choices=("npy", "image"), default="npy")
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--bench-seconds", type=float, default=2.0)
    parser.add_argument("--bench-trials", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Serve deployment")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "serve_cpu.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "serving.md")
    args = parser.parse_args()
    folds = parse_levels(args.folds)
    work = Path(tempfile.mkdtemp(prefix="fcnn-serve-"))
    print(f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; work in {work}", flush=True)
    subprocess.run(cli("data", "synth", TASK, str(work / "synth"), "--per-class", str(args.per_class),
                       "--no-progress"), check=True, stdout=subprocess.DEVNULL)
    images = work / "synth" / "test"
    knobs = ["--max-batch-images", str(args.batch_images), "--max-delay-ms", str(args.max_delay_ms)]
    rows: list[dict[str, Any]] = []
    for fold in folds:
        torch.manual_seed(0)
        checkpoint = save_checkpoint(work / f"f{fold}.pt", make_checkpoint(build_model(TASK, fold=fold)))
        proc, url = start_server([str(checkpoint), "--port", "0", *knobs], timeout=120)
        try:
            rows += measure("native", fold, url, images, args)
        finally:
            code = stop_server(proc)
        print(f"native f={fold}: SIGTERM exit code {code}", flush=True)
        if not args.no_ray:
            port = free_port()
            proc, url = start_server([str(checkpoint), "--ray", "--ray-cpus", str(os.cpu_count()), "--replica-cpus",
                                      str(os.cpu_count()), "--port", str(port), *knobs], timeout=300)
            try:
                rows += measure("ray", fold, url, images, args)
            finally:
                stop_server(proc)
    bench = offline(folds, args.batch_images, args.bench_seconds, args.bench_trials)
    print("offline: " + ", ".join(f"f={f} {v:,.0f} images/s" for f, v in bench.items()), flush=True)
    checks = []
    for fold in folds:
        big = [r for r in rows if r["server_name"] == "native" and r["fold"] == fold
               and r["images_per_request"] == args.batch_images]
        if big:
            share = max(r["images_per_s"] for r in big) / bench[fold]
            checks.append(f"f = {fold}, {args.batch_images}-image requests: native server at {share:.0%} of the "
                          f"offline images/s ({'meets' if share >= 0.5 else 'misses'} the 50 % target)")
    if not args.no_ray:
        for fold in folds:
            pairs = [(n, r) for n in rows for r in rows if n["server_name"] == "native" and r["server_name"] == "ray"
                     and n["fold"] == r["fold"] == fold and n["concurrency"] == r["concurrency"]
                     and n["images_per_request"] == r["images_per_request"]]
            ahead = sum(n["images_per_s"] >= r["images_per_s"] for n, r in pairs)
            checks.append(f"f = {fold}: native images/s >= Ray Serve's at {ahead} of {len(pairs)} levels")
    for line in checks:
        print(line)
    machine = machine_info("cpu")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "rows": rows, "offline": bench, "checks": checks},
                                    indent=2, default=str) + "\n", encoding="utf-8")
    doc = args.doc.read_text(encoding="utf-8") if args.doc.exists() else "# Serving\n"
    args.doc.write_text(replace_section(doc, "serve-bench", markdown(rows, bench, checks, args, machine)),
                        encoding="utf-8")
    print(f"wrote {args.json} and {args.doc}")


if __name__ == "__main__":
    main()
