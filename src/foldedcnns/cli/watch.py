"""``foldedcnns watch``: classify live streams in real time, folding frames of all streams together."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from foldedcnns.cli.common import add_engine_options, add_json_option, engine_from_args, format_table
from foldedcnns.inference.live import OPEN_TIMEOUT_S, READ_TIMEOUT_S
from foldedcnns.inference.live_batcher import DEFAULT_QUEUE_FRAMES
from foldedcnns.inference.live_output import STDOUT
from foldedcnns.inference.watch import (
    DEFAULT_BATCH_FRAMES,
    DEFAULT_MAX_LATENCY_MS,
    WatchOptions,
    WatchReport,
    run_watch,
)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:,.1f}"


def format_report(report: WatchReport) -> str:
    rows = [[s["stream"], s["received"], s["classified"], s["dropped"], s["reconnects"], _ms(s["latency_p50_ms"]),
             _ms(s["latency_p99_ms"]), s["status"]] for s in (st.to_dict() for st in report.streams)]
    table = format_table(["stream", "received", "classified", "dropped", "reconnects", "p50 ms", "p99 ms", "status"],
                         rows)
    mean = report.frames / report.batches if report.batches else 0.0
    lines = [table, "",
             f"{report.frames:,} frames in {report.batches:,} batches (mean {mean:.1f}, at most {report.max_batch}; "
             f"fold {report.fold}, {report.padded_slots:,} padded slots), models {report.model_seconds:.2f} s of "
             f"{report.wall_seconds:.1f} s; bound {report.max_latency_ms:g} ms"]
    if report.stopped_by:
        lines.append(f"stopped by {report.stopped_by}: the queued frames were classified and every row flushed")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = WatchOptions(max_latency_ms=args.max_latency_ms, drop=not args.no_drop, realtime=args.realtime,
                           queue_frames=args.queue_frames, timeouts=(args.open_timeout_s, args.read_timeout_s),
                           metrics_port=args.metrics_port, metrics_host=args.metrics_host, overwrite=args.overwrite)
    report = run_watch(args.target, args.urls, args.out, engine=engine_from_args(args), crop=args.crop,
                       batch_size=args.batch_size, data=args.data, options=options)
    out = sys.stderr if args.out == STDOUT else sys.stdout  # stdout holds the rows with --out -
    if args.json:
        out.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        print(format_report(report), file=out)
    out.flush()
    report.raise_for_failures()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "watch", help="classify live streams in real time, folding frames of all streams together",
        description="Follow live video streams (anything FFmpeg opens: rtsp://, rtmp://, http(s):// incl. HLS, "
                    "tcp://, udp://, srt://; or files with --realtime) and classify every frame with the model of "
                    "CKPT (with --crop) or every task of a scrape SPEC (.json). The frames of all streams go to one "
                    "batcher that folds them together in multiples of f; no frame waits longer than "
                    "--max-latency-ms (when behind, the oldest frames are dropped and counted). A stream that "
                    "ends or fails is reopened with back-off. Rows are JSON lines, one file per stream "
                    "(<stream>.jsonl in --out DIR, or stdout with --out - for one stream), flushed after every "
                    "batch: stream, frame, pts, received, the prediction columns, latency_ms. SIGTERM/SIGINT "
                    "stop reading, classify what is queued, flush and exit 0. docs/live.md has the details.")
    parser.add_argument("target", metavar="SPEC|CKPT",
                        help="scrape SPEC (.json: tasks with name, checkpoint, crop) or a checkpoint")
    parser.add_argument("urls", metavar="URL", nargs="+",
                        help="stream URL, NAME=URL to name its rows and file, or a video file with --realtime")
    parser.add_argument("--out", required=True, metavar="DIR|-",
                        help="folder for one <stream>.jsonl per stream, or - for one stream's rows on stdout")
    parser.add_argument("--crop", default=None, help="x,y,w,h region of each frame a CKPT reads (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing <stream>.jsonl files")
    parser.add_argument("--realtime", action="store_true",
                        help="accept video files and play them at their frame rate (a file that ends is done)")
    live = parser.add_argument_group("real time")
    live.add_argument("--max-latency-ms", type=float, default=DEFAULT_MAX_LATENCY_MS, metavar="L",
                      help="longest time from a frame's decoding to its row: batches start early enough, and when "
                           f"behind the oldest frames are dropped and counted (default: {DEFAULT_MAX_LATENCY_MS:g})")
    live.add_argument("--no-drop", action="store_true",
                      help="never drop a frame: the lag grows when the machine falls behind (and a full stream "
                           "queue stops reading that stream)")
    live.add_argument("--batch-size", type=int, default=None, metavar="N",
                      help=f"most frames per batch, a multiple of the fold (default: {DEFAULT_BATCH_FRAMES} rounded "
                           "up to one; a SPEC task's batch_size wins)")
    live.add_argument("--queue-frames", type=int, default=DEFAULT_QUEUE_FRAMES, metavar="Q",
                      help=f"frames each stream may queue; a full queue drops its oldest (default: "
                           f"{DEFAULT_QUEUE_FRAMES})")
    live.add_argument("--open-timeout-s", type=float, default=OPEN_TIMEOUT_S,
                      help=f"give up opening a stream after S s, then retry (default: {OPEN_TIMEOUT_S:g})")
    live.add_argument("--read-timeout-s", type=float, default=READ_TIMEOUT_S,
                      help=f"a stream that sends nothing for S s is reopened (default: {READ_TIMEOUT_S:g})")
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--metrics-port", type=int, default=None, metavar="P",
                         help="serve Prometheus metrics on http://HOST:P/metrics (0 picks a free port)")
    metrics.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server (default: "
                                                                     "127.0.0.1, loopback only)")
    add_engine_options(parser, device="cpu",
                       threads_help="CPU threads for each model (default: all cores but one, left to decoding)")
    add_json_option(parser)
    parser.set_defaults(func=run)
