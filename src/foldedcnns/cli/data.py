"""``foldedcnns data``: prepare data sets (NoScope frames and splits, synthetic game crops, contact sheets)."""

from __future__ import annotations

import argparse
from pathlib import Path

from foldedcnns.cli.common import add_decode_options, add_json_option, decode_plan_from_args, format_table, print_json
from foldedcnns.data.crop import Crop
from foldedcnns.data.noscope import FRAME_SIZE, extract_frames, split_frames, split_params
from foldedcnns.data.synth import contact_sheet, folder_contact_sheet, generate_synthetic
from foldedcnns.errors import ConfigError
from foldedcnns.inference.scrape import run_cache
from foldedcnns.utils.outputs import check_output


def run_frames(args: argparse.Namespace) -> int:
    count = extract_frames(args.video, args.out_dir, size=args.size, start=args.start, end=args.end,
                           crop=Crop.parse(args.crop), overwrite=args.overwrite, progress=not args.no_progress)
    result = {"video": args.video, "out_dir": args.out_dir, "frames": count,
              "first_frame": args.start, "last_frame": args.start + count - 1, "size": args.size}
    if args.json:
        print_json(result)
    else:
        print(f"wrote {count} frames ({args.start}..{args.start + count - 1}) of {args.video} "
              f"as {args.size}x{args.size} PNGs to {args.out_dir}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    params = split_params(args.config, object_name=args.object, fraction=args.fraction,
                          start_split=args.start_split)
    stats = split_frames(args.labels, args.frames, args.out_dir, params, overwrite=args.overwrite,
                         link=not args.copy, progress=not args.no_progress)
    if args.json:
        print_json({"out_dir": args.out_dir, "object": params.object_name, "fraction": list(params.fraction),
                    "start_split": params.start_split, "splits": stats})
        return 0
    total = sum(s["frames"] for s in stats.values())
    print(f"wrote {total} frames ({params.object_name!r} = class 1) to {args.out_dir}/{{train,val,test}}/{{0,1}}")
    if args.print_stats:
        print(format_table(["split", "frames", "first", "last", "positive", "positive fraction"],
                           [[name, s["frames"], s["first_frame"], s["last_frame"], s["positive"],
                             round(s["positive_fraction"], 4)] for name, s in stats.items()]))
    return 0


def run_synth(args: argparse.Namespace) -> int:
    if args.sheet:
        check_output(args.sheet, overwrite=args.overwrite, flag="--sheet")
    counts = generate_synthetic(args.task, args.out_dir, per_class=args.per_class, seed=args.seed,
                                overwrite=args.overwrite, workers=args.workers, progress=not args.no_progress)
    sheet = contact_sheet(args.task, args.sheet, seed=args.seed) if args.sheet else None
    if args.json:
        print_json({"task": args.task, "out_dir": args.out_dir, "counts": counts,
                    "sheet": sheet["path"] if sheet else None})
    else:
        print(f"wrote {sum(counts.values())} crops of {args.task} to {args.out_dir} "
              f"(train {counts['train']}, val {counts['val']}, test {counts['test']})")
        if sheet:
            print(f"contact sheet: {sheet['path']}")
    return 0


def run_sheet(args: argparse.Namespace) -> int:
    check_output(args.out, overwrite=args.overwrite, flag="OUT_PNG")
    if args.folder:
        result = folder_contact_sheet(args.folder, args.out, per_class=args.per_class or 8)
    else:
        if not args.task:
            raise ConfigError("name a TASK to draw, or pass --folder DIR to show an image folder")
        result = contact_sheet(args.task, args.out, per_class=args.per_class, seed=args.seed)
    if args.json:
        print_json(result)
    else:
        print(f"contact sheet of {result['images']} images in {result['classes']} classes: {result['path']}")
    return 0


def run_cache_command(args: argparse.Namespace) -> int:
    spec, checkpoint = (args.model, None) if args.model.lower().endswith(".json") else (None, args.model)
    result = run_cache(args.video, args.out, spec=spec, checkpoint=checkpoint, crop=args.crop,
                       plan=decode_plan_from_args(args))
    if args.json:
        print_json(result)
    else:
        print(f"cached {result['frames']} frames of {args.video} for {', '.join(result['tasks'])} in {args.out}; "
              f"pass {args.out} as the input of predict or scrape")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="prepare data: NoScope frames and splits, synthetic game crops",
                            description="Prepare data sets: extract and split NoScope video frames, draw the "
                                        "synthetic game-screen data set, draw contact sheets.")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    commands.required = True

    frames = commands.add_parser(
        "noscope-frames", help="decode every frame of a video into OUT_DIR/<frame index>.png",
        description="Decode VIDEO in order (no seeking, no trust in header frame counts), resize each frame "
                    "with nearest neighbour as the original, and write OUT_DIR/<frame index>.png. Names are the "
                    "true frame indices, also with --start. OUT_DIR appears only once every frame is written.")
    frames.add_argument("video", metavar="VIDEO")
    frames.add_argument("out_dir", metavar="OUT_DIR")
    frames.add_argument("--size", type=int, default=FRAME_SIZE,
                        help=f"output side in pixels (default {FRAME_SIZE}, as NoScope)")
    frames.add_argument("--start", type=int, default=0, help="first frame to write (default 0)")
    frames.add_argument("--end", type=int, default=None, help="stop before this frame (default: end of video)")
    frames.add_argument("--crop", metavar="X,Y,W,H", default=None, help="cut this box out of each frame first")
    frames.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    frames.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(frames)
    frames.set_defaults(func=run_frames)

    split = commands.add_parser(
        "noscope-split", help="sort extracted frames into train/val/test and class 0/1 folders",
        description="Label each frame from the NoScope CSV (class 1 when a row names the object on that frame) "
                    "and copy the frames of three contiguous chunks into OUT_DIR/{train,val,test}/{0,1}/. CONFIG is "
                    "coral, night, taipei, roundabout (or noscope/<name>, or a task description JSON), or "
                    "'custom' with --object.")
    split.add_argument("config", metavar="CONFIG")
    split.add_argument("out_dir", metavar="OUT_DIR")
    split.add_argument("--labels", required=True, metavar="CSV", help="NoScope CSV with frame and object_name")
    split.add_argument("--frames", required=True, metavar="DIR", help="folder of <frame>.png from noscope-frames")
    split.add_argument("--object", default=None, help="object that makes a frame class 1 (overrides CONFIG)")
    split.add_argument("--fraction", default=None, help="chunk size as a fraction of the video, e.g. 1/8")
    split.add_argument("--start-split", type=int, default=None, help="index of the training chunk")
    split.add_argument("--print-stats", action="store_true", help="print the positive fraction of each split")
    split.add_argument("--copy", action="store_true", help="copy frames instead of hard-linking them")
    split.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    split.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(split)
    split.set_defaults(func=run_split)

    synth = commands.add_parser(
        "synth", help="draw the synthetic game-screen data set for a game task",
        description="Draw HUD-like crops at the task's input size for each of its classes and write "
                    "OUT_DIR/{train,val,test}/<class>/<n>.png (70/15/15). Deterministic for a seed.")
    synth.add_argument("task", metavar="TASK", help="game task name or description JSON")
    synth.add_argument("out_dir", metavar="OUT_DIR")
    synth.add_argument("--per-class", type=int, default=200, help="images per class (default 200)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--workers", type=int, default=None, help="drawing processes (default: up to 2)")
    synth.add_argument("--sheet", metavar="PNG", default=None, help="also write a contact sheet here")
    synth.add_argument("--overwrite", action="store_true", help="replace OUT_DIR (and --sheet) if it exists")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(synth)
    synth.set_defaults(func=run_synth)

    sheet = commands.add_parser(
        "sheet", help="draw a labelled grid of samples of a game task or an image folder",
        description="Write a PNG grid of enlarged samples with their labels: synthetic crops of TASK, or the "
                    "first images of each class of --folder DIR.")
    sheet.add_argument("task", metavar="TASK", nargs="?", help="game task name or description JSON")
    sheet.add_argument("out", metavar="OUT_PNG", type=Path)
    sheet.add_argument("--folder", default=None, help="show this image folder (ROOT/<class>/<image>) instead")
    sheet.add_argument("--per-class", type=int, default=None, help="samples per class")
    sheet.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sheet.add_argument("--overwrite", action="store_true", help="replace OUT_PNG if it exists")
    add_json_option(sheet)
    sheet.set_defaults(func=run_sheet)

    cache = commands.add_parser(
        "cache", help="decode a video once and store each model's inputs, for predict/scrape at the model's speed",
        description="Decode VIDEO once and store in OUT_DIR what each task's model reads (its crop at its input "
                    "size, uint8, memory-mapped) with the frame indices and a fingerprint of the video. MODEL is a "
                    "scrape SPEC (.json) or a checkpoint (with --crop). predict and scrape accept OUT_DIR as an input "
                    "and give the same rows without decoding; a cache whose video changed is refused.")
    cache.add_argument("video", metavar="VIDEO")
    cache.add_argument("model", metavar="SPEC|CKPT", help="scrape spec JSON, or a checkpoint")
    cache.add_argument("--out", required=True, metavar="OUT_DIR", help="new or empty folder")
    cache.add_argument("--crop", metavar="X,Y,W,H", default=None, help="with a checkpoint: the box its model reads")
    add_decode_options(cache)
    add_json_option(cache)
    cache.set_defaults(func=run_cache_command)
