"""``foldedcnns loadtest``: keep C requests in flight against a server and report throughput and latency."""

from __future__ import annotations

import argparse
import sys

from foldedcnns.cli.common import add_json_option, format_table, parse_int_list, print_json
from foldedcnns.serving import LevelResult, loadtest
from foldedcnns.serving.loadtest import default_processes

HEADERS = ["concurrency", "images/req", "images/s", "requests/s", "p50 ms", "p95 ms", "p99 ms", "queue ms",
           "compute ms", "batch", "answers", "client CPU"]


def _ms(value: float | None) -> float | str:
    return "-" if value is None else round(value, 2)


def format_results(results: list[LevelResult]) -> str:
    rows = [[r.concurrency, r.images_per_request, round(r.images_per_s, 1), round(r.requests_per_s, 1),
             _ms(r.p50_ms), _ms(r.p95_ms), _ms(r.p99_ms), _ms(r.server.get("queue_ms")),
             _ms(r.server.get("compute_ms_per_batch")), _ms(r.server.get("batch_images")),
             " ".join(f"{k}:{v}" for k, v in r.statuses.items()) or "-",
             f"{r.client_cpu_cores:.2f}/{r.client_cores}{' SATURATED' if r.client_saturated else ''}"]
            for r in results]
    return format_table(HEADERS, rows)


def run(args: argparse.Namespace) -> int:
    results = loadtest(args.url, args.images, concurrency=parse_int_list(args.concurrency, "--concurrency"),
                       per_request=args.images_per_request, seconds=args.seconds, warmup_s=args.warmup,
                       payload=args.payload, processes=args.processes)
    if args.json:
        print_json([r.to_dict() for r in results])
    else:
        print(format_results(results))
    for r in results:  # on stderr, so --json stays parseable
        warning = r.saturation_warning()
        if warning:
            print(warning, file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "loadtest", help="closed-loop load test of a 'foldedcnns serve' server (perf_analyzer style)",
        description="For each concurrency level C keep C requests in flight against URL/v1/predict for --seconds "
                    "(after --warmup seconds not counted); print images/s, requests/s, p50/p95/p99 latency of "
                    "the 200 answers, answers by status, the server's queue/compute split when it exposes it, and "
                    "the client's own CPU use (cores used / cores it may use). Requests are encoded once and sent "
                    "by --processes client processes; when the client saturates its CPU it says so on stderr, "
                    "since its figures are then a floor, not the server's ceiling.")
    parser.add_argument("url", metavar="URL", help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of images to send (recursive)")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated levels (default: 1,8,64)")
    parser.add_argument("--images-per-request", type=int, default=1, metavar="K",
                        help="images per request (default: 1; K > 1 sends a multipart form)")
    parser.add_argument("--payload", choices=("image", "npy"), default="image",
                        help="image files as they are (default) or one .npy array at the model's size")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level (default: 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default: 1)")
    parser.add_argument("--processes", type=int, default=None, metavar="P",
                        help=f"client processes sharing the C connections (default: a quarter of the cores, 1 to 8; "
                             f"here {default_processes()}), leaving the rest to a server on the same host")
    add_json_option(parser)
    parser.set_defaults(func=run)
