"""``foldedcnns serve``: an HTTP inference server that batches requests in multiples of the fold."""

from __future__ import annotations

import argparse

from foldedcnns.cli.common import add_engine_options, engine_from_args
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.serving import build_service, serve, serve_ray
from foldedcnns.serving.batcher import DEFAULT_DELAY_MS, DEFAULT_QUEUE_IMAGES
from foldedcnns.serving.connections import (
    DEFAULT_BACKLOG,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_STREAM_WINDOW,
    DEFAULT_UPLOAD_TIMEOUT_S,
    FD_RESERVE,
    ConnectionLimits,
    bind_socket,
)
from foldedcnns.serving.http import DEFAULT_DRAIN_TIMEOUT_S
from foldedcnns.serving.limits import DEFAULT_MAX_BODY_MB, RequestBudget
from foldedcnns.serving.ray_serve import DEFAULT_REPLICA_CPUS

DEFAULT_TIMEOUT_MS = 30_000.0


# The seconds-valued connection limits: (flag, default, what happens past it).
TIMEOUT_OPTIONS: tuple[tuple[str, float, str], ...] = (
    ("--header-timeout-s", DEFAULT_HEADER_TIMEOUT_S, "a connection that has not sent a whole request head within S s "
     "of opening (or of its previous answer) is closed, 408 if it sent part of one"),
    ("--body-timeout-s", DEFAULT_BODY_TIMEOUT_S, "a request body that pauses S s between two chunks gets 408"),
    ("--upload-timeout-s", DEFAULT_UPLOAD_TIMEOUT_S, "a request body not wholly received within S s gets 408, "
     "however steady"),
    ("--keep-alive-s", DEFAULT_KEEP_ALIVE_S, "an idle keep-alive connection is closed after S s"),
)

def run(args: argparse.Namespace) -> int:
    engine = engine_from_args(args)
    common = {"engine": engine, "data": args.data, "max_batch_images": args.max_batch_images,
              "max_delay_ms": args.max_delay_ms, "max_queue_images": args.max_queue_images,
              "budget": RequestBudget(args.max_body_mb, args.max_image_pixels, args.max_request_pixels)}
    limits = ConnectionLimits(header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                              upload_timeout_s=args.upload_timeout_s, keep_alive_s=args.keep_alive_s,
                              max_connections=args.max_connections, backlog=args.backlog,
                              stream_window=args.stream_window)
    if args.ray:
        return serve_ray(args.checkpoint, host=args.host, port=args.port, address=args.ray_address,
                         num_cpus=args.ray_cpus, replicas=args.replicas, replica_cpus=args.replica_cpus,
                         limits=limits, **common)
    with bind_socket(args.host, args.port, limits.backlog) as sock:
        # bound before the model loads: a port in use is one line at once
        service = build_service(args.checkpoint, request_timeout_ms=args.request_timeout_ms or None,
                                isolate_requests=args.isolate_requests, **common)
        # set once for the server's life, so no batch changes it (Engine.pytorch_threads)
        with torch_threads(service.predictor.engine.pytorch_threads):
            return serve(service, sock=sock, drain_timeout_s=args.drain_timeout_s, log_level=args.log_level,
                         limits=limits)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve", help="serve a checkpoint over HTTP, batching requests in multiples of its fold",
        description="Serve CKPT over HTTP (POST /v1/predict with image/*, multipart/form-data or application/x-npy; "
                    "GET /v1/model, /healthz, /readyz, /metrics; frames over the WebSocket /v1/stream). "
                    "A dynamic batcher starts a batch of up to N images "
                    "as soon as the model is free (with D > 0, a batch that is not full waits up to D ms for more); "
                    "batches are multiples of the fold. SIGTERM drains: "
                    "/readyz turns 503, new requests get 503, accepted ones are answered (uploads still arriving "
                    "at --drain-timeout-s get 503), exit 0. "
                    "Needs pip install 'foldedcnns[serve]'.")
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint written by 'foldedcnns train'")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    add_engine_options(parser, threads_help="intra-op threads for the model (default: PyTorch's; with --ray: "
                                            "each replica's --replica-cpus, rounded)")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch-images", type=int, default=None, metavar="N",
                          help="images per model batch, a multiple of the fold (default: 64 rounded up to one)")
    batching.add_argument("--max-delay-ms", type=float, default=DEFAULT_DELAY_MS, metavar="D",
                          help=f"longest wait of the oldest image for a fuller batch (default: {DEFAULT_DELAY_MS:g})")
    batching.add_argument("--max-queue-images", type=int, default=DEFAULT_QUEUE_IMAGES, metavar="Q",
                          help=f"images that may wait; past it 503 with Retry-After (default: {DEFAULT_QUEUE_IMAGES})")
    batching.add_argument("--request-timeout-ms", type=float, default=DEFAULT_TIMEOUT_MS, metavar="T",
                          help="a request not started within T ms gets 504 (default: 30000; 0: none); a client "
                               "may ask for less with the header X-Request-Timeout-Ms")
    batching.add_argument("--isolate-requests", action="store_true",
                          help="fold only images of the same request together (each request gets exactly what "
                               "Predictor.predict gives its images; costs padded slots)")
    batching.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB,
                          help=f"largest request body; past it 413 (default: {DEFAULT_MAX_BODY_MB:g})")
    batching.add_argument("--max-image-pixels", type=int, default=None, metavar="P",
                          help="most declared pixels (width x height) of one image, checked from its header "
                               "before decoding; past it 413 (default: 4x the larger of the model's input and the "
                               "crop's extent, between a 4K and an 8K frame)")
    batching.add_argument("--max-request-pixels", type=int, default=None, metavar="P",
                          help="most declared pixels of all images of one request; past it 413 (default: 4x the "
                               "per-image limit)")
    batching.add_argument("--drain-timeout-s", type=float, default=DEFAULT_DRAIN_TIMEOUT_S,
                          help="longest SIGTERM drain; uploads still arriving then get 503 "
                               f"(default: {DEFAULT_DRAIN_TIMEOUT_S:g})")
    connections = parser.add_argument_group(
        "connections (what one client may hold; with --ray the body timeouts and --keep-alive-s apply, Ray's "
        "proxy bounds a whole request by --upload-timeout-s + 30 s)")
    for flag, default, text in TIMEOUT_OPTIONS:
        connections.add_argument(flag, type=float, default=default, metavar="S", help=f"{text} (default: {default:g})")
    connections.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="C",
                             help="open connections; one more gets 503 with Retry-After at once and is closed, "
                                  "so idle clients cannot use up file descriptors (default: "
                                  f"{DEFAULT_MAX_CONNECTIONS}, at most the open-file limit less {FD_RESERVE})")
    connections.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG,
                             help="connections the kernel queues before the server accepts them "
                                  f"(default: {DEFAULT_BACKLOG})")
    connections.add_argument("--stream-window", type=int, default=DEFAULT_STREAM_WINDOW, metavar="W",
                             help="frames of one /v1/stream WebSocket in flight (read, not yet answered); while "
                                  f"W are, the server stops reading that stream (default: {DEFAULT_STREAM_WINDOW})")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="uvicorn's log level (default: warning)")
    ray = parser.add_argument_group("Ray Serve (pip install 'foldedcnns[ray,serve]')")
    ray.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead of the native server")
    ray.add_argument("--ray-address", default=None, help="'auto' or HOST:PORT of a cluster (default: a local Ray)")
    ray.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    ray.add_argument("--replicas", type=int, default=1, help="model replicas (default: 1)")
    ray.add_argument("--replica-cpus", type=float, default=DEFAULT_REPLICA_CPUS,
                     help=f"CPUs per replica, fractional allowed; one GPU each with --device cuda "
                          f"(default: {DEFAULT_REPLICA_CPUS:g})")
    parser.set_defaults(func=run)
