"""Frames over the WebSocket ``/v1/stream`` against one HTTP POST per frame, same server, same concurrency.

    .venv/bin/python benchmarks/ws_vs_post.py                                  # the measurement (a few minutes)
    .venv/bin/python benchmarks/ws_vs_post.py --backend openvino --precision bf16 --doc docs/serving.md
    .venv/bin/python benchmarks/ws_vs_post.py --seconds 1 --warmup 0 --trials 1 --per-class 3 --out /tmp/ws  # runs?

One ``foldedcnns serve`` (lol/goldnumber-fraction at ``--fold``, seeded random weights: throughput does not
depend on them; N = ``--batch-images``, D = 0, ``--stream-window`` = the largest of ``--windows``) and, per trial
in alternating order, two load generators at ``--concurrency`` connections (default 8), each sending one
synthetic test image per frame (``--payload png``: the PNG file; ``npy``: ``np.save`` of the model-size array):

* ``post``: ``wrk`` (when installed; ``apt-get install wrk``; else ``foldedcnns loadtest``'s client), one
  ``POST /v1/predict`` per frame, one request in flight per connection (HTTP/1.1), as in ``benchmarks/serve.py``;
* ``ws``: ``--processes`` asyncio processes speaking the WebSocket protocol themselves: every frame is encoded
  (and masked) once before the clock starts, each connection keeps W = each of ``--windows`` frames in flight
  (it sends the next frame when an answer comes back) and reads only each answer's frame header and
  whether it holds ``"error"``. Its CPU (cores used, measured window only) is reported like wrk's, and a
  process above 90 % of a core is flagged: then the figure is the client's ceiling, not the server's.

Frames/s count answered frames (POST: 2xx; ws: answers without an error) in the measured seconds; latency
is the client's, from a frame's send to its answer (for ws at W > 1 that includes the wait behind the
frames ahead of it). Writes ``--out``.csv (every trial) and ``--out``.md (medians, the WebSocket / POST ratio),
and with ``--doc`` the table into that file between ``<!-- ws-bench:start/end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import multiprocessing
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from docs_report import write_results  # this folder's docs helpers
from serve_clients import free_port, measure_loadtest, measure_wrk, start_server, stop_server, wrk_available

from foldedcnns.benchmark.machine import machine_info
from foldedcnns.models import build_model
from foldedcnns.models.registry import get_task
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.serving.loadtest import build_bodies, default_processes, gather_reports, image_paths, percentile

TASK = "lol/goldnumber-fraction"
ROOT = Path(__file__).resolve().parent.parent
SATURATED = 0.9  # a client process above this share of a core is the bottleneck
FIELDS = ["trial", "client", "window", "concurrency", "frames_per_s", "p50_ms", "p99_ms", "ok", "errors",
          "client_cpu_cores", "client_saturated", "batch_images", "seconds"]
MASK = b"\x5a\x17\xc3\x9e"  # one fixed client mask: the frames are masked once, before the clock


# -- the WebSocket load generator (no websockets library on the hot path) ------------------------------------


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One whole, masked client frame (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    data = np.frombuffer(payload, np.uint8)
    key = np.resize(np.frombuffer(MASK, np.uint8), size)
    return head + MASK + (data ^ key).tobytes()


async def _handshake(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"the server refused the WebSocket: {head.splitlines()[0].decode(errors='replace')}")
    return reader, writer


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await reader.readexactly(size)


async def _ws_client(host: str, port: int, frames: Sequence[bytes], connections: int, window: int, offset: int,
                     span: tuple[float, float]) -> dict[str, Any]:
    """``connections`` streams, each with ``window`` frames in flight until ``span[1]``; what ends inside ``span``."""
    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    cpu: list[float] = []
    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + max(0.0, span[0] - time.monotonic()), lambda: cpu.append(time.process_time()))

    async def stream(start: int) -> None:
        reader, writer = await _handshake(host, port)
        order = itertools.count(start)
        sent: deque[float] = deque()

        def send_next() -> None:
            writer.write(frames[next(order) % len(frames)])
            sent.append(time.monotonic())

        for _ in range(window):
            send_next()
        while time.monotonic() < span[1]:
            opcode, payload = await _read_frame(reader)
            if opcode == 0x9:  # the server's keep-alive ping
                writer.write(ws_frame(payload, 0xA))
                continue
            if opcode == 0x8:
                raise RuntimeError(f"the server closed the stream: {payload[2:].decode(errors='replace')}")
            done = time.monotonic()
            began = sent.popleft()
            if span[0] <= done <= span[1]:
                if b'"error"' in payload:
                    counts["errors"] += 1
                else:
                    counts["ok"] += 1
                    latencies.append(done - began)
            send_next()
        writer.write(ws_frame(struct.pack("!H", 1000), 0x8))
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    await asyncio.gather(*(stream(offset + 997 * i) for i in range(connections)))
    cpu.append(time.process_time())
    return {"latencies": latencies, **counts, "cpu_s": cpu[-1] - cpu[0] if len(cpu) == 2 else 0.0}


def _ws_process(host: str, port: int, frames: Sequence[bytes], connections: int, window: int, offset: int,
                span: tuple[float, float], out: Any) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        out.send(asyncio.run(_ws_client(host, port, frames, connections, window, offset, span)))
    except Exception as exc:  # reported by the parent
        out.send({"failed": f"{type(exc).__name__}: {exc}"})
    finally:
        out.close()


def measure_ws(port: int, frames: Sequence[bytes], concurrency: int, window: int, seconds: float, warmup_s: float,
               processes: int) -> dict[str, Any]:
    """``concurrency`` streams over ``processes`` fork()ed client processes for ``warmup_s + seconds``."""
    procs = max(1, min(concurrency, processes))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    context = multiprocessing.get_context("fork")  # the encoded frames are inherited, not pickled
    start = time.monotonic() + 0.3
    span = (start + warmup_s, start + warmup_s + seconds)
    pipes, children = [], []
    for i, share in enumerate(shares):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_ws_process, daemon=True,
                                args=("127.0.0.1", port, frames, share, window, i * 7919, span, send))
        child.start()
        send.close()
        pipes.append(receive)
        children.append(child)
    results = gather_reports(pipes, children, warmup_s + seconds + 60)
    latencies = [v for r in results for v in r["latencies"]]
    cpu = [r["cpu_s"] / seconds for r in results]
    ok = sum(r["ok"] for r in results)
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return {"frames_per_s": ok / seconds, "p50_ms": None if p50 is None else 1000 * p50,
            "p99_ms": None if p99 is None else 1000 * p99, "ok": ok, "errors": sum(r["errors"] for r in results),
            "client_cpu_cores": sum(cpu), "client_saturated": max(cpu) > SATURATED, "seconds": seconds}


# -- the server, the cells, the table ------------------------------------------------------------------------


def scrape_batches(url: str) -> tuple[float, float]:
    """(images, batches) the server has run so far."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith(("foldedcnns_batch_images_sum ", "foldedcnns_batch_images_count ")):
            name, value = line.split()
            found[name] = float(value)
    return found.get("foldedcnns_batch_images_sum", 0.0), found.get("foldedcnns_batch_images_count", 0.0)


def measure(client: str, window: int, port: int, bodies: list[tuple[bytes, str]], frames: list[bytes],
            args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    before = scrape_batches(url)
    if client == "ws":
        got = measure_ws(port, frames, args.concurrency, window, args.seconds, args.warmup, args.processes)
    elif client == "wrk":
        wrk = measure_wrk(url + "/v1/predict", bodies, args.concurrency, args.seconds, args.warmup, args.processes)
        got = {**wrk, "frames_per_s": wrk["requests_per_s"]}
    else:
        level = measure_loadtest(url, bodies, args.concurrency, 1, args.seconds, args.warmup, args.processes)
        got = {**level, "frames_per_s": level["requests_per_s"]}
    after = scrape_batches(url)
    batches = after[1] - before[1]
    return {**got, "client": client, "window": window, "concurrency": args.concurrency,
            "batch_images": (after[0] - before[0]) / batches if batches else None}


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key in sorted({(r["client"], r["window"]) for r in rows}, key=lambda k: (k[0] == "ws", k[1])):
        group = [r for r in rows if (r["client"], r["window"]) == key]

        def med(field: str, group: list[dict[str, Any]] = group) -> float | None:
            values = [r[field] for r in group if r.get(field) is not None]
            return statistics.median(values) if values else None

        out.append({"client": key[0], "window": key[1], "trials": len(group),
                    "errors": sum(r["errors"] for r in group),
                    "saturated": sum(bool(r["client_saturated"]) for r in group),
                    **{f: med(f) for f in ("frames_per_s", "p50_ms", "p99_ms", "client_cpu_cores", "batch_images")}})
    return out


def markdown(table: list[dict[str, Any]], args: argparse.Namespace, machine: dict[str, Any]) -> str:
    post = next(m for m in table if m["client"] != "ws")
    lines = [f"Measured by `benchmarks/ws_vs_post.py` on {machine.get('cpu')} ({machine.get('logical_cpus')} logical "
             f"CPUs; the clients on the same machine), {TASK} at f = {args.fold}, {args.backend} {args.precision} "
             f"with {args.threads} threads, N = {args.batch_images}, D = 0; one {args.payload} frame per POST or "
             f"WebSocket message, {args.concurrency} connections; medians of {args.trials} interleaved trials of "
             f"{args.seconds:g} s. W: frames in flight per connection. Client CPU is the load generator's own, in "
             "cores.", "", "| client | W | frames/s | vs POST | p50 ms | p99 ms | mean batch | client CPU | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in table:
        name = f"POST ({m['client']})" if m["client"] != "ws" else "WebSocket"
        ratio = m["frames_per_s"] / post["frames_per_s"] if post["frames_per_s"] else float("nan")
        cpu = f"{m['client_cpu_cores']:.2f}" + (" (saturated)" if m["saturated"] else "")
        batch = "-" if m["batch_images"] is None else f"{m['batch_images']:.1f}"
        lines.append(f"| {name} | {m['window']} | {m['frames_per_s']:,.0f} | {ratio:.2f}x | {_ms(m['p50_ms'])} | "
                     f"{_ms(m['p99_ms'])} | {batch} | {cpu} | {m['errors'] or '-'} |")
    best = max((m for m in table if m["client"] == "ws"), key=lambda m: m["frames_per_s"])
    if post["frames_per_s"]:
        lines += ["", f"- WebSocket (W = {best['window']}) / POST at c = {args.concurrency}: "
                  f"{best['frames_per_s'] / post['frames_per_s']:.2f}x (target >= 3x)"]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="the engine's threads (default: all CPUs)")
    parser.add_argument("--batch-images", type=int, default=64, help="N of the server")
    parser.add_argument("--payload", choices=("png", "npy"), default="png")
    parser.add_argument("--per-class", type=int, default=40, help="synthetic images per class (test split is 15 %%)")
    parser.add_argument("--concurrency", type=int, default=8, help="connections of either client (default: 8)")
    parser.add_argument("--windows", default="1,32", help="frames in flight per WebSocket connection, a list")
    parser.add_argument("--clients", default="wrk,ws", help="wrk (else loadtest) for the POSTs, ws")
    parser.add_argument("--processes", type=int, default=default_processes(),
                        help="client processes of ws and loadtest, wrk's threads (default: loadtest's default)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell (wrk: whole seconds)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ws_vs_post",
                        help="writes OUT.csv and OUT.md")
    parser.add_argument("--doc", type=Path, default=None, help="also write the table into this Markdown file")
    args = parser.parse_args()
    windows = [int(w) for w in args.windows.split(",") if w]
    clients = [c for c in args.clients.split(",") if c]
    if "wrk" in clients and not wrk_available():
        print("notice: wrk is not installed (apt-get install wrk); the POSTs are measured with loadtest", flush=True)
        clients[clients.index("wrk")] = "loadtest"
    cells = [(c, 1) for c in clients if c != "ws"] + [("ws", w) for w in windows if "ws" in clients]
    work = Path(tempfile.mkdtemp(prefix="fcnn-ws-"))
    print(f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; cells {cells}; work in {work}", flush=True)
    subprocess.run([sys.executable, "-m", "foldedcnns.cli.main", "data", "synth", TASK, str(work / "synth"),
                    "--per-class", str(args.per_class), "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(work / f"f{args.fold}.pt", make_checkpoint(build_model(TASK, fold=args.fold)))
    _, height, width = get_task(TASK).input_size
    paths = image_paths(work / "synth" / "test")
    kind = "npy" if args.payload == "npy" else "image"
    bodies = build_bodies(paths, 1, kind, (height, width))
    frames = [ws_frame(body) for body, _ in bodies]
    port = free_port()
    cmd = [sys.executable, "-m", "foldedcnns.cli.main", "serve", str(checkpoint), "--port", str(port), "--backend",
           args.backend, "--precision", args.precision, "--threads", str(args.threads), "--max-batch-images",
           str(args.batch_images), "--stream-window", str(max(windows, default=1))]
    proc = start_server(cmd, f"http://127.0.0.1:{port}/healthz", timeout=120, log=work / "server.log")
    rows: list[dict[str, Any]] = []
    try:
        for trial in range(args.trials):
            for client, window in cells if trial % 2 == 0 else cells[::-1]:
                row = {"trial": trial, **measure(client, window, port, bodies, frames, args)}
                rows.append(row)
                print(f"trial {trial} {client:8s} W={window:3d}: {row['frames_per_s']:9.1f} frames/s "
                      f"p50 {row['p50_ms'] or 0:7.2f} ms p99 {row['p99_ms'] or 0:7.2f} ms client "
                      f"{row['client_cpu_cores']:.2f} cores{' SATURATED' if row['client_saturated'] else ''}"
                      f"{'  errors ' + str(row['errors']) if row['errors'] else ''}", flush=True)
    finally:
        code = stop_server(proc)
    if code != 0:
        print(f"notice: the server exited {code}; its log: {work / 'server.log'}", flush=True)
    table = medians(rows)
    text = markdown(table, args, machine_info("cpu"))
    print(text)
    write_results(args.out, rows, FIELDS, "WebSocket frames against one POST per frame", text, args.doc, "ws-bench")

if __name__ == "__main__":
    main()
