"""How many live streams one machine follows in real time with ``foldedcnns watch``, at f=1 and folded.

    .venv/bin/python benchmarks/live.py                                    # the measurement (about 50 minutes)
    .venv/bin/python benchmarks/live.py --doc docs/live.md                 # ... and its table into the doc
    .venv/bin/python benchmarks/live.py --quick                            # a functional check (about a minute)

For each frame size (``--sizes``, default 320x240 and 1280x720) a child process serves ``--max-streams`` live
streams on loopback (``python -m foldedcnns.inference.live_streams``: a synthetic H.264 MPEG-TS clip encoded
once, written to each connection at 30 frames/s). For each fold (1 and ``--fold``; ``--task``'s CNN with seeded
random weights: speed does not depend on them) a trial runs ``foldedcnns watch CKPT URL x K --json`` in a child
process for ``--settle`` + ``--seconds`` after the first rows appear, then SIGTERM (it classifies what is
queued, flushes and prints its summary). K is doubled from 1 while K keeps up, then bisected; K keeps up when
each of ``--repeats`` trials does.

A trial keeps up ("real time") when, over the rows decoded from ``--settle`` seconds after the first row on, no
frame is missing (dropped), no stream reconnected, every stream's p99 latency (decoded to row) is within
``--max-latency-ms``, and decoding kept pace: for every stream the wall time between its last row was decoded
at most the bound later, relative to its pts, than its most punctual row (a stream the machine cannot decode
fast enough falls behind in the socket, where watch's own latency cannot see it). The settle period exists
because all K streams open at the same instant and each releases the frames buffered while it was probed in
one burst; frames dropped then are reported as ``startup_dropped`` in the CSV.
Writes ``--out``.csv (every trial) and ``--out``.md (per size and fold: streams followed, frames/s, p99, the
folded / f=1 ratio), and with ``--doc`` the table into that file between ``<!-- live-bench:start/end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from docs_report import write_results  # this folder's docs helpers

from foldedcnns.benchmark.machine import machine_info
from foldedcnns.models import build_model
from foldedcnns.models.registry import get_task
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.utils.text import markdown_table

ROOT = Path(__file__).resolve().parent.parent
FPS = 30
START_TIMEOUT_S = 120.0
FIELDS = ["size", "fold", "streams", "real_time", "why", "frames", "frames_per_s", "dropped", "startup_dropped",
          "reconnects",
          "p99_ms", "max_lag_ms", "mean_batch", "padded_slots", "seconds"]


def checkpoint(task: str, fold: int, folder: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(folder / f"f{fold}.pt", make_checkpoint(build_model(get_task(task), fold=fold)))


@contextlib.contextmanager
def stream_server(size: str, count: int, seconds: float):
    """A child serving ``count`` loopback streams of ``size``; yields their URLs."""
    child = subprocess.Popen([sys.executable, "-m", "foldedcnns.inference.live_streams", "--streams", str(count),
                              "--size", size, "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        urls = line.split()
        if len(urls) != count:
            raise RuntimeError(f"the stream server did not start ({child.poll()})")
        yield urls
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def steady_state(paths: list[Path], settle: float) -> dict[str, float]:
    """What the streams' rows show from ``settle`` seconds after the first row on (all K streams open at once,
    and each releases the ~0.5 s of frames buffered while it was probed in one burst: a start-up transient,
    counted apart): rows, frames missing between consecutive rows (dropped or lost), the largest p99
    latency of a stream, and the decoding lag (how much later than its smallest (decoding time - pts) a
    stream's last row was decoded: a stream decoded too slowly falls behind in its socket, where watch's
    latency cannot see it)."""
    streams = [[json.loads(line) for line in path.open(encoding="utf-8")] for path in paths]
    start = min(rows[0]["received"] for rows in streams if rows) + settle
    frames = missing = 0
    p99 = lag = 0.0
    for rows in streams:
        rows = [r for r in rows if r["received"] >= start]
        if len(rows) < 2:
            return {"frames": frames, "missing": missing, "p99_ms": float("inf"), "lag_ms": float("inf")}
        frames += len(rows)
        missing += sum(b["frame"] - a["frame"] - 1 for a, b in itertools.pairwise(rows))
        latencies = sorted(r["latency_ms"] for r in rows)
        p99 = max(p99, latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))])
        offsets = [r["received"] - r["pts"] for r in rows if r["pts"] is not None]
        lag = max(lag, (offsets[-1] - min(offsets)) * 1000 if offsets else float("inf"))
    return {"frames": frames, "missing": missing, "p99_ms": p99, "lag_ms": lag}


def trial(ckpt: Path, urls: list[str], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One watch run over ``urls`` (see the module doc)."""
    folder = out / f"k{len(urls)}"
    for old in folder.glob("*.jsonl"):  # a previous trial's rows must not pass for this one's
        old.unlink()
    argv = [sys.executable, "-m", "foldedcnns.cli.main", "watch", str(ckpt), *[f"s{i}={u}" for i, u in enumerate(urls)],
            "--out", str(folder), "--overwrite", "--max-latency-ms", str(args.max_latency_ms), "--json",
            "--backend", args.backend, "--precision", args.precision]
    with open(out / "watch.stderr", "w", encoding="utf-8") as err:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        files = [folder / f"s{i}.jsonl" for i in range(len(urls))]
        while not all(f.exists() and f.stat().st_size for f in files):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"watch did not start: {(out / 'watch.stderr').read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(args.settle + args.seconds)
        child.send_signal(signal.SIGTERM)
        stdout, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    report = json.loads(stdout)
    streams = report["streams"]
    steady = steady_state([Path(s["output"]) for s in streams], args.settle)
    dropped, reconnects = sum(s["dropped"] for s in streams), sum(s["reconnects"] for s in streams)
    why = [text for bad, text in ((steady["missing"], "drops"), (reconnects, "reconnects"),
                                  (steady["p99_ms"] > args.max_latency_ms, "p99"),
                                  (steady["lag_ms"] > args.max_latency_ms, "decoding lag")) if bad]
    return {"streams": len(urls), "real_time": not why, "why": ",".join(why), "frames": steady["frames"],
            "frames_per_s": round(steady["frames"] / args.seconds, 1), "dropped": steady["missing"],
            "startup_dropped": dropped - steady["missing"], "reconnects": reconnects,
            "p99_ms": round(steady["p99_ms"], 1), "max_lag_ms": round(steady["lag_ms"], 1),
            "mean_batch": report["mean_batch"], "padded_slots": report["padded_slots"],
            "seconds": report["wall_seconds"]}


def capacity(ckpt: Path, urls: list[str], args: argparse.Namespace, out: Path, rows: list[dict[str, Any]],
             base: dict[str, Any]) -> dict[str, Any] | None:
    """The largest K that keeps up (doubling, then bisection); every trial is appended to ``rows``."""
    results: dict[int, dict[str, Any]] = {}

    def run(k: int) -> bool:
        for _ in range(args.repeats):
            result = {**base, **trial(ckpt, urls[:k], args, out)}
            rows.append(result)
            print(json.dumps(result), flush=True)
            if k not in results or result["frames_per_s"] < results[k]["frames_per_s"]:
                results[k] = result
            if not result["real_time"]:
                return False
        return True

    good, bad, k = 0, None, 1
    while k <= len(urls):
        if not run(k):
            bad = k
            break
        good, k = k, k * 2
    if bad is not None:
        while bad - good > 1:
            middle = (good + bad) // 2
            good, bad = (middle, bad) if run(middle) else (good, middle)
    return results.get(good)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="noscope/coral", help="the CNN (whole frames, resized to its input)")
    parser.add_argument("--fold", type=int, default=4)
    parser.add_argument("--sizes", default="320x240,1280x720")
    parser.add_argument("--max-streams", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per trial")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds after the first row before the measurement starts (start-up burst)")
    parser.add_argument("--repeats", type=int, default=2, help="trials per K (K keeps up when every one does)")
    parser.add_argument("--max-latency-ms", type=float, default=300.0)
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "live_cpu")
    parser.add_argument("--doc", type=Path, default=None, help="write the table into this Markdown file")
    parser.add_argument("--quick", action="store_true", help="functional check: 320x240, up to 2 streams, 3 s")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.max_streams, args.seconds, args.settle, args.repeats = "320x240", 2, 3.0, 1.0, 1
        args.out = Path(tempfile.mkdtemp(prefix="live-bench-")) / "live_quick"
    folds = sorted({1, args.fold})
    rows: list[dict[str, Any]] = []
    best: dict[tuple[str, int], dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory(prefix="live-bench-") as temp:  # checkpoints and rows, removed at the end
        work = Path(temp)
        ckpts = {f: checkpoint(args.task, f, work) for f in folds}
        for size in args.sizes.split(","):
            clip_seconds = args.settle + args.seconds + 30  # every connection gets the clip from its start
            with stream_server(size, args.max_streams, clip_seconds) as urls:
                for fold in folds:
                    base = {"size": size, "fold": fold}
                    best[(size, fold)] = capacity(ckpts[fold], urls, args, work, rows, base)
    table = []
    for size in args.sizes.split(","):
        one = best.get((size, 1))
        for fold in folds:
            b = best.get((size, fold))
            k = b["streams"] if b else 0
            ratio = f"{k / one['streams']:.2f}x" if one and fold != 1 else ""
            table.append([size, fold, k, b["frames_per_s"] if b else "-", b["p99_ms"] if b else "-",
                          b["mean_batch"] if b else "-", ratio])
    info = machine_info()
    text = (f"`benchmarks/live.py`: {args.task}, {args.backend} {args.precision}, bound {args.max_latency_ms:g} ms, "
            f"{args.seconds:g} s per trial after {args.settle:g} s of start-up, {args.repeats} trials per count, "
            f"streams at {FPS} frames/s on loopback; {info['cpu']} "
            f"({info['logical_cpus']} logical CPUs).\n\n"
            + markdown_table(["frames", "fold", "streams in real time", "frames/s", "p99 ms", "mean batch",
                              "streams vs f=1"], table))
    write_results(args.out, rows, FIELDS, "Live streams followed in real time", text, args.doc, "live-bench")
    print(text)


if __name__ == "__main__":
    main()
