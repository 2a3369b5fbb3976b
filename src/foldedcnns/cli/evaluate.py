"""``foldedcnns evaluate``: Top-1, Top-5 and loss of a checkpoint on one split."""

from __future__ import annotations

import argparse

from foldedcnns.cli.common import add_device_option, add_json_option, format_table, print_json
from foldedcnns.runtime.engine import Engine
from foldedcnns.training.evaluation import DEFAULT_EVAL_BATCH, evaluate
from foldedcnns.training.splits import SPLITS


def run(args: argparse.Namespace) -> int:
    # The training-style engine (fp32 eager; --amp: fp16) on --device.
    result = evaluate(args.checkpoint, args.data, args.split, engine=Engine(device=args.device),
                      batch_size=args.batch_size, amp=args.amp, progress=not args.json)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['task']} fold {result['fold']} (epoch {result['epoch']}), split {result['split']}")
    print(format_table(["Top-1 %", "Top-5 %", "loss", "images"],
                       [[result["top1"], result["top5"], result["loss"], result["images"]]]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="Top-1, Top-5 and loss of a checkpoint on a data split",
                            description="Evaluate a checkpoint written by 'foldedcnns train'; task, fold, classes "
                                        "and normalisation come from the checkpoint.")
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (best.pt or last.pt)")
    parser.add_argument("--data", required=True, metavar="DIR", help="the data folder (or CIFAR archive)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="which split (default: test)")
    add_device_option(parser, "auto")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_EVAL_BATCH, help="images per batch")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="run the model in fp16 (CUDA only; default: fp32, as validation in training)")
    add_json_option(parser)
    parser.set_defaults(func=run)
