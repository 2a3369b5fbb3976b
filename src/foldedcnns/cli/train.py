"""``foldedcnns train``: train one task at one fold (a thin layer over :func:`foldedcnns.training.train`)."""

from __future__ import annotations

import argparse

from foldedcnns.cli.common import add_json_option, add_task_options, format_table, print_json, resolve_task_arg
from foldedcnns.training.distill import DEFAULT_TEMPERATURE, DISTILL_LOSSES
from foldedcnns.training.recipes import LR_SCHEDULES, OPTIMIZERS, RECOMMENDED_EPOCHS, list_recipes
from foldedcnns.training.trainer import DEFAULT_EVAL_BATCH, TrainConfig, TrainResult, train


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``sweep`` (every default comes from the recipe)."""
    parser.add_argument("--recipe", choices=list_recipes(), default=None,
                        help="training recipe. Default 'recommended': Adam 1e-3, cosine schedule, batch 128, "
                             f"{RECOMMENDED_EPOCHS} epochs, no curriculum, and for f > 1 slot warm-up for 1/4 of "
                             "the epochs plus a blend of another 1/4, at any --epochs; it is the default because "
                             "it trains f = 2 and f = 4 to within about 1 point of f = 1's Top-1 at equal epochs "
                             "(real digits, 100 epochs, mean of 2 seeds: f = 1 99.17 %%, f = 2 98.33 %%, "
                             "f = 4 98.67 %%; docs/training.md). 'original': the original "
                             "release's recipe for the task's family (game: Adam 1e-4, 1,500 epochs, curriculum "
                             "when folded; noscope; cifar10/cifar100), also by name; 'quick': 30-epoch CPU runs")
    parser.add_argument("--epochs", type=int,
                        help=f"number of epochs (default: the recipe's; recommended: {RECOMMENDED_EPOCHS})")
    parser.add_argument("--batch-size", type=int, help="images per batch, rounded down to a multiple of the fold")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--weight-decay", type=float, help="weight decay")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="learning-rate schedule, stepped per epoch")
    parser.add_argument("--curriculum", action=argparse.BooleanOptionalAction, default=None,
                        help="introduce classes over the epochs (default: off; on for folded game tasks with "
                             "--recipe original); a curriculum too long for --epochs is scaled to fit, with a notice")
    parser.add_argument("--curriculum-gap", type=int, metavar="EPOCHS",
                        help="epochs between curriculum steps (original: 60)")
    parser.add_argument("--distill-from", metavar="CKPT", help="teacher checkpoint whose logits are the targets")
    parser.add_argument("--distill-loss", choices=DISTILL_LOSSES, default="mse",
                        help="MSE on logits (the original) or KL divergence with a temperature")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help="distillation temperature for --distill-loss kl")
    parser.add_argument("--distill-weight", type=float, default=1.0, metavar="W",
                        help="loss = W * distillation + (1 - W) * cross-entropy on the labels (original: 1)")
    parser.add_argument("--slot-warmup", type=int, metavar="EPOCHS",
                        help="epochs a folded model first trains as f separate per-image CNNs, then as many "
                             "to blend them (default: the recipe's; recommended: 1/4 of the epochs; 0 = off, as "
                             "the original)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="automatic mixed precision (default: on with CUDA)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (model init, shuffling, augmentation)")
    parser.add_argument("--eval-batch-size", type=int, default=DEFAULT_EVAL_BATCH, help="images per eval batch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def training_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The TrainConfig fields set by :func:`add_training_options`."""
    return {"recipe": args.recipe, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "weight_decay": args.weight_decay, "optimizer": args.optimizer, "lr_schedule": args.lr_schedule,
            "curriculum": args.curriculum, "curriculum_gap": args.curriculum_gap,
            "slot_warmup": args.slot_warmup, "distill_weight": args.distill_weight,
            "distill_from": args.distill_from, "distill_loss": args.distill_loss,
            "distill_temperature": args.temperature, "device": args.device, "amp": args.amp, "seed": args.seed,
            "eval_batch_size": args.eval_batch_size, "progress": not args.no_progress}


def result_summary(result: TrainResult) -> dict[str, object]:
    data = result.to_dict()
    data.pop("history")
    data.pop("settings")
    return data


def run(args: argparse.Namespace) -> int:
    config = TrainConfig(task=resolve_task_arg(args), data=args.data, out=args.out, fold=args.fold,
                         multiplier=args.multiplier, resume=args.resume, **training_overrides(args))
    result = train(config)
    if args.json:
        print_json(result_summary(result))
        return 0
    best = result.best
    rows = [[split, best.get(f"{split}_top1"), best.get(f"{split}_top5"), best.get(f"{split}_loss"),
             best.get(f"{split}_images")] for split in ("train", "val", "test") if best.get(f"{split}_images")]
    print(f"{result.task} fold {result.fold}: {result.epochs} epochs in {result.seconds:.1f} s; "
          f"best epoch {result.best_epoch} (validation Top-1)")
    print(format_table(["split", "Top-1 %", "Top-5 %", "loss", "images"], rows))
    if result.teacher:
        print(f"teacher {result.teacher['teacher']}: train Top-1 {result.teacher['train_top1']:.2f} %")
    print(f"checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train the original CNN (--fold 1) or a FoldedCNN of a task",
                            description="Train one task at one fold; per-epoch metrics, best.pt and last.pt "
                                        "go to --out. A killed run continues with --resume. The default recipe "
                                        "('recommended', see --recipe) works at any --fold and --epochs.")
    add_task_options(parser)
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="image folder with train/val/test class folders (or a CIFAR archive for cifar10/100)")
    parser.add_argument("--fold", type=int, default=1, help="fold f: images per model input (1 = original CNN)")
    parser.add_argument("--multiplier", type=float, help="hidden-width multiplier (default sqrt(f))")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    add_training_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)
