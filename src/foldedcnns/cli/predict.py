"""``foldedcnns predict``: classify every frame of videos, image folders or globs into CSV files."""

from __future__ import annotations

import argparse

from foldedcnns.cli.common import add_json_option, format_table, print_json
from foldedcnns.errors import ConfigError
from foldedcnns.inference.distributed import run_ray_predict
from foldedcnns.inference.pipeline import PROFILE_FRAMES, PredictReport, model_threads, run_predict
from foldedcnns.inference.predictor import Predictor
from foldedcnns.runtime import BACKENDS, DEVICE_CHOICES, resolve_device, torch_threads
from foldedcnns.runtime.backends import PRECISIONS
from foldedcnns.runtime.backends.openvino import OpenVinoBackend, is_ir_path


def format_report(report: PredictReport) -> str:
    rows = [[r.source, r.kind, r.rows, r.output or "-", "ok" if r.error is None else "stopped early"]
            for r in report.results]
    lines = [format_table(["input", "kind", "rows", "csv", "status"], rows), ""]
    lines.append(f"end-to-end   {report.end_to_end_fps:,.1f} frames/s ({report.frames:,} frames in "
                 f"{report.wall_seconds:.2f} s; fold {report.fold}, batch {report.batch_size}, "
                 f"{report.backend} on {report.device})")
    if report.stages is not None:
        stages = report.stages
        lines.append(f"decode only  {stages.decode_fps:,.1f} frames/s (measured alone on {stages.frames:,} frames)")
        lines.append(f"model only   {stages.model_fps:,.1f} frames/s")
        if report.efficiency is not None:
            lines.append(f"end-to-end is {report.efficiency:.0%} of the slower stage")
    for key, value in report.extra.items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def model_arg(args: argparse.Namespace) -> str | Predictor:
    """The checkpoint, or a :class:`Predictor` made here for an engine that fixes its thread count when
    it is prepared (openvino and openvino-streams, an IR) or is calibrated on ``--data``: with the model's
    share of the cores."""
    if not (args.data or isinstance(BACKENDS.get(args.backend), OpenVinoBackend) or is_ir_path(args.checkpoint)):
        return args.checkpoint
    device = resolve_device(args.device)
    with torch_threads(model_threads(device, args.threads)):
        return Predictor(args.checkpoint, device=device, backend=args.backend, precision=args.precision,
                         batch_size=args.batch_size, data=args.data)


def run(args: argparse.Namespace) -> int:
    if args.ray and is_ir_path(args.checkpoint):
        raise ConfigError("--ray runs checkpoints, not an OpenVINO IR; pass the .pt checkpoint (with --backend "
                          "openvino) or drop --ray")
    if args.ray:
        report = run_ray_predict(args.checkpoint, args.inputs, args.out, batch_size=args.batch_size,
                                 backend=args.backend, precision=args.precision, device=args.device, crop=args.crop,
                                 address=args.ray_address, workers=args.workers, task_check=not args.no_task_check,
                                 progress=not args.no_progress, overwrite=args.overwrite, data=args.data)
    else:
        report = run_predict(model_arg(args), args.inputs, args.out, batch_size=args.batch_size,
                             backend=args.backend, precision=args.precision, device=args.device, crop=args.crop,
                             threads=args.threads,
                             profile_frames=args.profile_frames, task_check=not args.no_task_check,
                             progress=not args.no_progress, overwrite=args.overwrite)
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_report(report))
    report.raise_for_errors()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "predict", help="classify every frame of videos, image folders or globs into CSV files",
        description="Classify every frame of INPUT (a video file, a folder of images, or a quoted glob) with the "
                    "model of CKPT. One CSV per input: columns frame (videos) or path (images), label, class_name, "
                    "score. Decoding runs in a background thread; the report gives end-to-end, decode-only and "
                    "model-only frames/s.")
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint written by 'foldedcnns train', or an OpenVINO "
                                                           "IR (.xml) written by 'foldedcnns export --format openvino'")
    parser.add_argument("inputs", metavar="INPUT", nargs="+", help="video file, folder of images, or glob")
    parser.add_argument("--out", required=True,
                        help="CSV file for one input; a folder (one <name>.csv per input) for several. Rows "
                             "decoded before a fault go to <name>.csv.partial")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing CSVs (and .partial files); each only once its new file is complete")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per model call, a multiple of the checkpoint's fold (default about 256)")
    parser.add_argument("--backend", default="eager", choices=list(BACKENDS),
                        help="how the model runs, as in 'foldedcnns bench' (default: eager)")
    parser.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS),
                        help="default: fp32; int8 (openvino, onnxruntime) needs --data")
    parser.add_argument("--data", metavar="DIR", help="int8: the data set whose DIR/train (else DIR/val) images "
                                                      "calibrate the quantization")
    parser.add_argument("--device", default="cpu", choices=DEVICE_CHOICES, help="default: cpu")
    parser.add_argument("--crop", metavar="X,Y,W,H", default=None,
                        help="cut this rectangle (pixels) out of every frame before resizing to the model's input")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch CPU threads for the model (default: all cores but one, left to decoding)")
    parser.add_argument("--profile-frames", type=int, default=PROFILE_FRAMES,
                        help=f"frames decoded again to measure decode-only and model-only throughput "
                             f"(default {PROFILE_FRAMES}; 0 skips)")
    parser.add_argument("--no-task-check", action="store_true",
                        help="predict on a labelled image folder even if its classes or image size are not the "
                             "checkpoint's task's")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("distributed (Ray Data; pip install 'foldedcnns[ray]')")
    ray.add_argument("--ray", action="store_true", help="run on a Ray cluster with a pool of model actors")
    ray.add_argument("--ray-address", default=None,
                     help="'auto' or HOST:PORT of a running cluster (default: start a local Ray)")
    ray.add_argument("--workers", type=int, default=None, help="model actors (default: 2, or one per GPU)")
    add_json_option(parser)
    parser.set_defaults(func=run)
