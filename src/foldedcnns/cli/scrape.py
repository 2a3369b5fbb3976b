"""``foldedcnns scrape``: several models over every frame of videos, decoding each frame once."""

from __future__ import annotations

import argparse

from foldedcnns.cli.common import (
    add_decode_options,
    add_engine_options,
    add_json_option,
    engine_from_args,
    run_options_from_args,
)
from foldedcnns.cli.predict import add_ray_options, print_report
from foldedcnns.inference.distributed import RayOptions, run_ray_scrape
from foldedcnns.inference.scrape import run_scrape


def run(args: argparse.Namespace) -> int:
    if args.ray:
        report = run_ray_scrape(args.spec, args.inputs, args.out, engine=engine_from_args(args),
                                cluster=RayOptions(address=args.ray_address, workers=args.workers),
                                run=run_options_from_args(args))
    else:
        report = run_scrape(args.spec, args.inputs, args.out, engine=engine_from_args(args),
                            run=run_options_from_args(args))
    return print_report(report, args.json)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "scrape", help="run several models (one crop each) over every frame, decoding each frame once",
        description="Classify every frame of INPUT with every task of SPEC, a JSON file: {\"tasks\": [{\"name\": "
                    "\"gold\", \"checkpoint\": \"runs/gold/best.pt\", \"crop\": \"600,20,52,22\"}, ...]} (optional per "
                    "task: backend, precision, threads, batch_size). Every frame is decoded once; each model reads "
                    "its own crop and folds its own inputs. One CSV per input in --out DIR: frame (or path), then "
                    "<name>_label, <name>_class, <name>_score for every task; each task's columns equal "
                    "'foldedcnns predict' of its checkpoint and crop alone.")
    parser.add_argument("spec", metavar="SPEC", help="scrape spec JSON (tasks with name, checkpoint, crop)")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="video file, folder of images, glob, cache folder ('foldedcnns data cache'), a FIFO or -")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for one <name>.csv per input (rows decoded before a fault: <name>.csv.partial)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing CSVs once the new one is complete")
    add_engine_options(parser, device="cpu",
                       threads_help="CPU threads for each model (default: all cores but one, left to decoding)")
    add_decode_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_options(parser, "run on a Ray cluster: a pool of actors, each holding every task's model")
    add_json_option(parser)
    parser.set_defaults(func=run)
