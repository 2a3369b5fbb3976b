"""``foldedcnns train``: train one task at one fold (a thin layer over :func:`foldedcnns.training.train`)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from foldedcnns.cli.common import (
    add_device_option,
    add_json_option,
    add_task_options,
    format_table,
    print_json,
    resolve_task_arg,
)
from foldedcnns.training.config import run_options
from foldedcnns.training.recipes import Recipe, recipe_options
from foldedcnns.training.trainer import TrainConfig, TrainResult, train


def _add_option(parser: argparse.ArgumentParser, spec: dataclasses.Field, annotation: Any, default: Any) -> None:
    """The flag of one option field (its ``option`` metadata; type and bool-ness from its ``annotation``)."""
    meta, name = spec.metadata, spec.name
    if name == "device":
        add_device_option(parser, default)
        return
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    kind = _scalar_type(annotation)
    kwargs: dict[str, Any] = {"dest": name, "default": default, "help": meta["help"]}
    if kind is bool:
        kwargs["action"] = "store_false" if flag.startswith("--no-") else argparse.BooleanOptionalAction
    else:
        kwargs.update(type=kind, choices=meta.get("choices"))
        kwargs["metavar"] = meta.get("metavar") or (None if meta.get("choices") else flag[2:].replace("-", "_").upper())
    parser.add_argument(flag, **kwargs)


def _scalar_type(annotation: Any) -> type:
    """``bool``, ``int`` or ``float`` of a field annotation such as ``int | None``; anything else is ``str``."""
    members = typing.get_args(annotation) or (annotation,)
    return next((kind for kind in (bool, int, float) if kind in members), str)


def training_option_fields() -> list[dataclasses.Field]:
    """The training options in --help order: TrainConfig's fields (its own options and the recipe options it
    names), then the recipe options it does not name."""
    recipe = {f.name: f for f in recipe_options()}
    own = {f.name: f for f in run_options()}
    order = [f.name for f in dataclasses.fields(TrainConfig) if f.name in own or f.name in recipe]
    return [own.get(name) or recipe[name] for name in order] + [f for n, f in recipe.items() if n not in order]


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``sweep``, generated from the option fields of ``Recipe`` (default
    None: the recipe's value) and ``TrainConfig`` (default: the field's)."""
    run = {f.name for f in run_options()}
    hints = {**typing.get_type_hints(Recipe), **typing.get_type_hints(TrainConfig)}
    for spec in training_option_fields():
        _add_option(parser, spec, hints[spec.name], spec.default if spec.name in run else None)


def training_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The TrainConfig fields set by :func:`add_training_options` (recipe options TrainConfig does not name go
    into ``recipe_overrides``)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {f.name: getattr(args, f.name) for f in training_option_fields()}
    extra = {k: v for k, v in values.items() if k not in names}
    return {**{k: v for k, v in values.items() if k in names}, **({"recipe_overrides": extra} if extra else {})}


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
