"""Online serving on loopback: the native server beside LitServe and Ray Serve, wrk beside `foldedcnns loadtest`.

    .venv/bin/python benchmarks/serve.py                                   # the measurement (about 10 minutes)
    .venv/bin/python benchmarks/serve.py --backend openvino --precision bf16 --doc docs/serving.md
    .venv/bin/python benchmarks/serve.py --seconds 1 --warmup 0 --trials 1 --servers native  # does it run?

One model runtime for every server: lol/goldnumber-fraction at ``--fold`` (seeded random weights: throughput
does not depend on them) in a ``Predictor`` on one ``Engine`` (``--backend``, ``--precision``, ``--threads``),
batches of N = ``--batch-images``, wait D = ``--max-delay-ms``:

* ``native``: ``foldedcnns serve``;
* ``litserve``: the same Predictor in a LitServe ``LitAPI`` (``serve_litserve.py``; skipped with a notice when
  litserve is not installed: it is a benchmark-only dependency);
* ``ray``: ``foldedcnns serve --ray``, one replica with every CPU.

Cells: one PNG per request as an ``image/png`` body at ``--single-concurrency`` (1, 8, 64), and
``--batch-images``-image ``.npy`` requests at ``--batch-concurrency`` (8). Each cell is measured by ``wrk``
(when installed; ``apt-get install wrk``) and by :func:`foldedcnns.serving.loadtest.run_level`, the two
clients in alternating order, on the same server; both report their own CPU. The offline engine rate at the
same batch size (``bench``'s protocol) is measured once per trial. Trials are interleaved (each trial starts
every server in turn, in a rotated order, and measures all its cells), and the table reports medians.

The client runs on the same machine as the server and takes CPU from it: the figures are what one box
does end to end. Writes ``--out``.csv (every trial) and ``--out``.md (medians and the issue-25 checks), and,
with ``--doc``, the Markdown into that file between ``<!-- serve-bench:start/end -->``. A check's ratio (to
LitServe, to the offline rate) is taken within each trial, whose two sides ran minutes apart, and the median
of the trials' ratios is reported beside each trial's: on a shared machine the rates drift between trials
(the offline rate by 15 % in one run), and a ratio of medians would pair figures from different trials.
``--from-csv OUT.csv`` redoes the tables and checks of an earlier run without measuring.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from docs_report import write_results  # this folder's docs helpers
from serve_clients import free_port, measure_loadtest, measure_wrk, start_server, stop_server, wrk_available

from foldedcnns.benchmark.machine import machine_info
from foldedcnns.benchmark.runner import BenchConfig, run_benchmark
from foldedcnns.models import build_model
from foldedcnns.models.registry import get_task
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.serving.loadtest import build_bodies, default_processes, image_paths

TASK = "lol/goldnumber-fraction"
ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
FIELDS = ["trial", "server", "client", "payload", "images_per_request", "concurrency", "requests_per_s",
          "images_per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms", "ok", "errors", "client_cpu_cores",
          "client_saturated", "batch_images", "seconds"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "foldedcnns.cli.main", *args]


def engine_args(args: argparse.Namespace) -> list[str]:
    return ["--backend", args.backend, "--precision", args.precision, "--threads", str(args.threads)]


def server_command(name: str, checkpoint: Path, port: int, args: argparse.Namespace) -> tuple[list[str], str]:
    """(command, health URL) of one server on ``port``."""
    knobs = ["--max-batch-images", str(args.batch_images), "--max-delay-ms", str(args.max_delay_ms)]
    url = f"http://127.0.0.1:{port}"
    if name == "native":
        return cli("serve", str(checkpoint), "--port", str(port), *engine_args(args), *knobs), f"{url}/healthz"
    if name == "ray":
        cpus = str(os.cpu_count())
        return cli("serve", str(checkpoint), "--ray", "--ray-cpus", cpus, "--replica-cpus", cpus, "--port", str(port),
                   "--backend", args.backend, "--precision", args.precision, *knobs), f"{url}/healthz"
    return [sys.executable, str(HERE / "serve_litserve.py"), str(checkpoint), "--port", str(port), *engine_args(args),
            "--batch-images", str(args.batch_images), "--max-delay-ms", str(args.max_delay_ms)], f"{url}/health"


def cells(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(payload, images per request, concurrency) of every cell."""
    return [("png", 1, c) for c in args.single_concurrency] + \
           [("npy", args.batch_images, c) for c in args.batch_concurrency]


def measure_server(name: str, url: str, bodies: dict[str, list], trial: int, clients: list[str],
                   args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for payload, per_request, concurrency in cells(args):
        order = clients if trial % 2 == 0 else clients[::-1]
        for client in order:
            if client == "wrk":
                got = measure_wrk(url + "/v1/predict", bodies[payload], concurrency, args.seconds, args.warmup,
                                  args.processes)
            else:
                got = measure_loadtest(url, bodies[payload], concurrency, per_request, args.seconds, args.warmup,
                                       args.processes)
            row = {"trial": trial, "server": name, "client": client, "payload": payload,
                   "images_per_request": per_request, "concurrency": concurrency, **got,
                   "images_per_s": got["requests_per_s"] * per_request}
            rows.append(row)
            print(f"trial {trial} {name:8s} {client:8s} {payload} c={concurrency:3d}: {row['images_per_s']:9.1f} "
                  f"images/s {row['requests_per_s']:8.1f} req/s p50 {row['p50_ms'] or 0:6.2f} ms "
                  f"p99 {row['p99_ms'] or 0:7.2f} ms client {row['client_cpu_cores']:.2f} cores"
                  f"{' SATURATED' if row['client_saturated'] else ''}"
                  f"{'  errors ' + str(row['errors']) if row['errors'] else ''}", flush=True)
    return rows


def offline_rate(checkpoint_fold: int, args: argparse.Namespace) -> float:
    config = BenchConfig(tasks=(TASK,), folds=(checkpoint_fold,), batch_sizes=(args.batch_images,),
                         backends=(args.backend,), precisions=(args.precision,), seconds=args.bench_seconds,
                         trials=1, threads=args.threads, peak_seconds=0)
    return statistics.median(r.throughput for r in run_benchmark(config).records)


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = sorted({(r["server"], r["client"], r["payload"], r["images_per_request"], r["concurrency"]) for r in rows},
                  key=lambda k: (k[2] != "png", k[4], k[0], k[1]))
    out = []
    for key in keys:
        group = [r for r in rows if (r["server"], r["client"], r["payload"], r["images_per_request"],
                                     r["concurrency"]) == key]

        def med(field: str, group: list[dict[str, Any]] = group) -> float | None:
            values = [r[field] for r in group if r.get(field) is not None]
            return statistics.median(values) if values else None

        out.append({"server": key[0], "client": key[1], "payload": key[2], "images_per_request": key[3],
                    "concurrency": key[4], "trials": len(group), "errors": sum(r["errors"] for r in group),
                    "saturated": sum(bool(r["client_saturated"]) for r in group),
                    **{f: med(f) for f in ("requests_per_s", "images_per_s", "p50_ms", "p99_ms", "client_cpu_cores",
                                           "batch_images")}})
    return out


def find(table: list[dict[str, Any]], server: str, client: str, payload: str, concurrency: int) -> dict | None:
    return next((m for m in table if (m["server"], m["client"], m["payload"], m["concurrency"])
                 == (server, client, payload, concurrency)), None)


def per_trial(rows: list[dict[str, Any]], server: str, client: str, payload: str, concurrency: int,
              field: str = "requests_per_s") -> dict[int, float]:
    """``field`` of one cell in each trial: {trial: value}."""
    return {r["trial"]: r[field] for r in rows
            if (r["server"], r["client"], r["payload"], r["concurrency"]) == (server, client, payload, concurrency)}


def paired(top: dict[int, float], bottom: dict[int, float]) -> list[float]:
    """The ratios of two measurements taken side by side, trial by trial (the trials both have)."""
    return [top[t] / bottom[t] for t in sorted(top) if bottom.get(t)]


def _spread(ratios: list[float], fmt: str) -> str:
    return f"median of {len(ratios)} trials' ratios; trials {', '.join(format(r, fmt) for r in ratios)}"


def checks(table: list[dict[str, Any]], rows: list[dict[str, Any]], offline: list[float],
           args: argparse.Namespace) -> list[str]:
    """The issue-25 targets that these cells can decide, each with its figures. A ratio is taken within each
    trial (the two sides measured minutes apart, in the same state of a shared machine) and the median of those
    is reported, with each trial's."""
    out = []
    client = "wrk" if any(m["client"] == "wrk" for m in table) else "loadtest"
    if (one := find(table, "native", client, "png", 1)) and one["p50_ms"] is not None:
        out.append(f"native, {client}, c=1: p50 {one['p50_ms']:.2f} ms (target <= 3 ms)")
    if many := find(table, "native", client, "png", 64):
        out.append(f"native, {client}, c=64: {many['requests_per_s']:,.0f} requests/s (target >= 2,700)")
    for c in args.batch_concurrency:
        if ratios := paired(per_trial(rows, "native", client, "npy", c, "images_per_s"), dict(enumerate(offline))):
            big = find(table, "native", client, "npy", c)
            out.append(f"native, {client}, {args.batch_images}-image npy at c={c}: {statistics.median(ratios):.0%} of "
                       f"the offline rate ({_spread(ratios, '.0%')}; medians {big['images_per_s']:,.0f} and "
                       f"{statistics.median(offline):,.0f} images/s) (target >= 70 %)")
    for payload, _, c in cells(args):
        if ratios := paired(per_trial(rows, "native", client, payload, c), per_trial(rows, "litserve", client, payload,
                                                                                     c)):
            out.append(f"native / LitServe, {client}, {payload} c={c}: {statistics.median(ratios):.2f}x "
                       f"({_spread(ratios, '.2f')}) (target >= 2x)")
    for payload, _, c in cells(args):
        if ratios := paired(per_trial(rows, "native", "loadtest", payload, c), per_trial(rows, "native", "wrk", payload,
                                                                                         c)):
            ours = find(table, "native", "loadtest", payload, c)
            said = f"; it said it was the bottleneck in {ours['saturated']} of {ours['trials']} trials" \
                if ours["saturated"] else ""
            gaps = [r - 1 for r in ratios]
            out.append(f"loadtest vs wrk on native, {payload} c={c}: {statistics.median(gaps):+.0%} "
                       f"({_spread(gaps, '+.0%')}) (target within 20 %{said})")
    return out


def markdown(table: list[dict[str, Any]], offline: float, found: list[str], args: argparse.Namespace,
             machine: dict[str, Any]) -> str:
    lines = [f"Measured by `benchmarks/serve.py` on {machine.get('cpu')} ({machine.get('logical_cpus')} logical "
             f"CPUs; the clients on the same machine), {TASK} at f = {args.fold}, {args.backend} {args.precision} "
             f"with {args.threads} threads, N = {args.batch_images}, D = {args.max_delay_ms:g} ms; medians of "
             f"{args.trials} interleaved trials of {args.seconds:g} s per cell. Requests/s and images/s count the "
             "answered (2xx) requests; latency is the client's; client CPU is the load generator's own, in cores.",
             "", "| server | client | request | concurrency | requests/s | images/s | p50 ms | p99 ms | mean batch "
             "| client CPU | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in table:
        request = "1 PNG" if m["payload"] == "png" else f"{m['images_per_request']}-image npy"
        batch = "-" if m["batch_images"] is None else f"{m['batch_images']:.1f}"
        cpu = f"{m['client_cpu_cores']:.2f}" + (" (saturated)" if m["saturated"] else "")
        lines.append(f"| {m['server']} | {m['client']} | {request} | {m['concurrency']} | {m['requests_per_s']:,.0f} "
                     f"| {m['images_per_s']:,.0f} | {_ms(m['p50_ms'])} | {_ms(m['p99_ms'])} | {batch} | {cpu} "
                     f"| {m['errors'] or '-'} |")
    lines += ["", f"Offline (`bench`'s protocol, same engine, batch of {args.batch_images} images): "
              f"{offline:,.0f} images/s (median of {args.trials}).", "", *[f"- {c}" for c in found]]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def parse_levels(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the engine's threads (default: all CPUs)")
    parser.add_argument("--per-class", type=int, default=40, help="synthetic images per class (test split is 15 %%)")
    parser.add_argument("--servers", default="native,litserve,ray")
    parser.add_argument("--clients", default="wrk,loadtest")
    parser.add_argument("--single-concurrency", type=parse_levels, default=[1, 8, 64])
    parser.add_argument("--batch-concurrency", type=parse_levels, default=[8])
    parser.add_argument("--batch-images", type=int, default=64, help="N, and the images of an npy request")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="D of every server (default: 0, no wait)")
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help="loadtest's processes and wrk's threads (default: loadtest's default)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (wrk: whole seconds)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--bench-seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_cpu",
                        help="writes OUT.csv and OUT.md")
    parser.add_argument("--doc", type=Path, default=None, help="also write the table into this Markdown file")
    parser.add_argument("--from-csv", type=Path, default=None,
                        help="measure nothing: redo the tables and checks from an earlier run's OUT.csv")
    args = parser.parse_args()
    if args.from_csv is not None:
        rows, offline = read_rows(args.from_csv)
        args.trials = len(offline)
        report(rows, offline, args)
        return
    servers = [s for s in args.servers.split(",") if s]
    clients = [c for c in args.clients.split(",") if c]
    if "wrk" in clients and not wrk_available():
        print("notice: wrk is not installed (apt-get install wrk); measuring with loadtest only", flush=True)
        clients.remove("wrk")
    if "litserve" in servers and importlib.util.find_spec("litserve") is None:
        print("notice: litserve is not installed (pip install litserve, a benchmark-only dependency); skipping it",
              flush=True)
        servers.remove("litserve")
    if "ray" in servers and importlib.util.find_spec("ray") is None:
        print("notice: ray is not installed (pip install 'foldedcnns[ray,serve]'); skipping Ray Serve", flush=True)
        servers.remove("ray")
    work = Path(tempfile.mkdtemp(prefix="fcnn-serve-"))
    print(f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; servers {servers}; clients {clients}; "
          f"work in {work}", flush=True)
    subprocess.run(cli("data", "synth", TASK, str(work / "synth"), "--per-class", str(args.per_class),
                       "--no-progress"), check=True, stdout=subprocess.DEVNULL)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(work / f"f{args.fold}.pt", make_checkpoint(build_model(TASK, fold=args.fold)))
    paths = image_paths(work / "synth" / "test")
    _, height, width = get_task(TASK).input_size
    bodies = {"png": build_bodies(paths, 1), "npy": build_bodies(paths, args.batch_images, "npy", (height, width))}
    rows: list[dict[str, Any]] = []
    offline: list[float] = []
    for trial in range(args.trials):
        order = servers[trial % len(servers):] + servers[:trial % len(servers)]
        for name in order:
            port = free_port()
            cmd, health = server_command(name, checkpoint, port, args)
            proc = start_server(cmd, health, timeout=300 if name == "ray" else 120, log=work / f"{name}.log")
            try:
                rows += measure_server(name, f"http://127.0.0.1:{port}", bodies, trial, clients, args)
            finally:
                stop_server(proc)
        offline.append(offline_rate(args.fold, args))
        print(f"trial {trial} offline: {offline[-1]:,.0f} images/s", flush=True)
    report(rows, offline, args)


def report(rows: list[dict[str, Any]], offline: list[float], args: argparse.Namespace) -> None:
    """Print the checks; write OUT.csv, OUT.md and, with ``--doc``, the table into that file."""
    table = medians(rows)
    found = checks(table, rows, offline, args)
    for line in found:
        print(line)
    text = markdown(table, statistics.median(offline), found, args, machine_info("cpu"))
    write_results(args.out, [{**row, "offline_images_per_s": round(offline[row["trial"]], 1)} for row in rows],
                  [*FIELDS, "offline_images_per_s"], "Serving benchmark", text, args.doc, "serve-bench")


def read_rows(path: Path) -> tuple[list[dict[str, Any]], list[float]]:
    """The rows of an earlier run's CSV, typed as :func:`measure_server` made them, and each trial's offline rate."""
    integers, flags = {"trial", "images_per_request", "concurrency", "ok", "errors"}, {"client_saturated"}
    rows, offline = [], {}
    with path.open(newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key in integers:
                    row[key] = int(value)
                elif key in flags:
                    row[key] = value == "True"
                elif key in ("server", "client", "payload"):
                    row[key] = value
                else:
                    row[key] = float(value) if value != "" else None
            offline[row["trial"]] = row.pop("offline_images_per_s")
            rows.append(row)
    return rows, [offline[t] for t in sorted(offline)]


if __name__ == "__main__":
    main()
