"""``foldedcnns predict``: classify every frame of videos, image folders or globs into CSV files."""

from __future__ import annotations

import argparse

from foldedcnns.cli.common import (
    add_decode_options,
    add_engine_options,
    add_json_option,
    engine_from_args,
    format_table,
    print_json,
    run_options_from_args,
)
from foldedcnns.errors import ConfigError
from foldedcnns.inference.distributed import RayOptions, run_ray_predict
from foldedcnns.inference.openvino_ir import is_ir_path
from foldedcnns.inference.pipeline import PROFILE_FRAMES, run_predict
from foldedcnns.inference.predictor import deployment_engine
from foldedcnns.inference.report import PredictReport


def format_report(report: PredictReport) -> str:
    rows = [[r.source, r.kind, r.rows, r.output or "-", "ok" if r.error is None else "stopped early"]
            for r in report.results]
    lines = [format_table(["input", "kind", "rows", "csv", "status"], rows), ""]
    lines.append(f"end-to-end   {report.end_to_end_fps:,.1f} frames/s ({report.frames:,} frames in "
                 f"{report.wall_seconds:.2f} s; fold {report.fold}, batch {report.batch_size}, "
                 f"{report.backend} on {report.device})")
    if report.stages is not None:
        stages = report.stages
        lines.append(f"decode only  {stages.decode_fps:,.1f} frames/s (measured {stages.measured}, {stages.frames:,} "
                     "frames)")
        lines.append(f"model only   {stages.model_fps:,.1f} frames/s")
        if report.efficiency is not None:
            lines.append(f"end-to-end is {report.efficiency:.0%} of the slower stage")
    for key, value in report.extra.items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.ray and is_ir_path(args.checkpoint):
        raise ConfigError("--ray runs checkpoints, not an OpenVINO IR; pass the .pt checkpoint (with --backend "
                          "openvino) or drop --ray")
    engine = deployment_engine(args.checkpoint, engine_from_args(args), args.data)
    if args.ray:
        report = run_ray_predict(args.checkpoint, args.inputs, args.out, engine=engine, batch_size=args.batch_size,
                                 crop=args.crop, cluster=RayOptions(address=args.ray_address, workers=args.workers),
                                 run=run_options_from_args(args))
    else:
        report = run_predict(args.checkpoint, args.inputs, args.out, engine=engine, batch_size=args.batch_size,
                             crop=args.crop, run=run_options_from_args(args))
    return print_report(report, args.json)


def print_report(report: PredictReport, as_json: bool) -> int:
    """Print a predict or scrape report (JSON or a table), then fail with one line if an input stopped early."""
    if as_json:
        print_json(report.to_dict())
    else:
        print(format_report(report))
    report.raise_for_errors()
    return 0


def add_ray_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--ray``, ``--ray-address``, ``--workers`` (``predict`` and ``scrape``)."""
    ray = parser.add_argument_group("distributed (Ray Data; pip install 'foldedcnns[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help=f"{what}; long videos are cut at keyframes into shards decoded across the cluster "
                          "(with --ray, --decoders N cuts each video for N decode tasks; default: the cluster's "
                          "CPUs), and the CSVs equal those of one machine")
    ray.add_argument("--ray-address", default=None,
                     help="'auto' or HOST:PORT of a running cluster (default: start a local Ray)")
    ray.add_argument("--workers", type=int, default=None, help="model actors (default: 2, or one per GPU)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict", help="classify every frame of videos, image folders or globs into CSV files",
        description="Classify every frame of INPUT (a video file, a folder of images, or a quoted glob) with the "
                    "model of CKPT. One CSV per input: columns frame (videos) or path (images), label, class_name, "
                    "score. Decoding runs in a background thread; the report gives end-to-end, decode-only and "
                    "model-only frames/s.")
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint written by 'foldedcnns train', or an OpenVINO "
                                                           "IR (.xml) written by 'foldedcnns export --format openvino'")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="video file, folder of images, or glob; a FIFO or - (stdin, with --out FILE.csv) is a "
                             "video read once, in order (MPEG-TS streams; an MP4 only with its index first)")
    parser.add_argument("--out", required=True,
                        help="CSV file for one input; a folder (one <name>.csv per input) for several. Rows "
                             "decoded before a fault go to <name>.csv.partial")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing CSVs (and .partial files); each only once its new file is complete")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per model call, a multiple of the checkpoint's fold (default about 256)")
    add_engine_options(parser, device="cpu",
                       threads_help="CPU threads for the model (default: all cores but one, left to decoding)")
    parser.add_argument("--crop", metavar="X,Y,W,H", default=None,
                        help="cut this rectangle (pixels) out of every frame before resizing to the model's input")
    parser.add_argument("--profile-frames", type=int, default=0,
                        help=f"decode this many frames again after the run to measure decode-only and model-only "
                             f"throughput alone (e.g. {PROFILE_FRAMES}; default 0: the figures come from the run "
                             "itself, nothing is decoded twice)")
    add_decode_options(parser)
    parser.add_argument("--no-task-check", action="store_true",
                        help="predict on a labelled image folder even if its classes or image size are not the "
                             "checkpoint's task's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_options(parser, "run on a Ray cluster with a pool of model actors")
    add_json_option(parser)
    parser.set_defaults(func=run)
