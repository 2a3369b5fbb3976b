"""``foldedcnns models``: list every task with its family, input size and class count; ``--check FILE``
validates a description and prints the architecture it builds."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from foldedcnns.analysis import count_flops
from foldedcnns.analysis.report import shape_model
from foldedcnns.cli.common import add_json_option, format_table, print_json
from foldedcnns.errors import ConfigError
from foldedcnns.models import get_task, list_models, load_description


def model_rows(pattern: str = "*") -> list[dict[str, object]]:
    rows = []
    for name in list_models(pattern):
        config = shape_model(name).config
        spec = get_task(name)
        rows.append({"task": name, "family": "compound" if config.compound_phi else spec.family,
                     "input_size": list(config.image_size), "num_classes": spec.num_classes})
    return rows


def layer_rows(model: nn.Module) -> list[dict[str, Any]]:
    """Every leaf layer in call order with its output shape (one input), and params and MACs of the
    conv and linear layers (:func:`foldedcnns.analysis.count_flops`). Runs on the meta device."""
    costs = {layer.name: layer for layer in count_flops(model).layers}
    names = {module: name for name, module in model.named_modules()}
    rows: list[dict[str, Any]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not list(module.children()):
            name = names[module]
            cost = costs.get(name)
            rows.append({"layer": name, "type": type(module).__name__, "output_shape": list(output.shape[1:]),
                         "params": sum(p.numel() for p in module.parameters()),
                         "macs": 0 if cost is None else cost.macs})

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *model.config.input_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return rows


def check_report(path: str, fold: int = 1) -> dict[str, Any]:
    """Validate the description at ``path`` and describe the model it builds at ``fold``."""
    spec = load_description(path)
    model = shape_model(spec, fold=fold)
    config, report = model.config, count_flops(model)
    notes = []
    if spec.family == "game" and spec.architecture.get("pool1_stride", 2) != 2:
        notes.append(f"pool1_stride {spec.architecture['pool1_stride']} is read and ignored: the first pool has "
                     "stride 2, as in the original")
    return {"file": str(path), "valid": True, "task": spec.name, "family": spec.family,
            "architecture": dict(spec.architecture), "num_classes": spec.num_classes,
            "image_size": list(spec.input_size), "fold": config.fold, "multiplier": config.multiplier,
            "input_shape": list(config.input_shape), "params": report.params, "macs": report.macs,
            "flops": report.flops, "layers": layer_rows(model), "notes": notes}


def print_check(info: dict[str, Any]) -> None:
    arch = ", ".join(f"{k} {v}" for k, v in info["architecture"].items()) or "defaults"
    print(f"{info['file']}: valid; task {info['task']}, family {info['family']} ({arch}), "
          f"{info['num_classes']} classes, image {'x'.join(map(str, info['image_size']))}")
    print(f"model at fold {info['fold']} (multiplier {info['multiplier']:.4g}): input "
          f"{'x'.join(map(str, info['input_shape']))}")
    rows = [[r["layer"], r["type"], "x".join(map(str, r["output_shape"])), r["params"] or "", r["macs"] or ""]
            for r in info["layers"]]
    rows.append(["total", "", "", info["params"], info["macs"]])
    print(format_table(["layer", "type", "output shape", "params", "MACs"], rows))
    for note in info["notes"]:
        print(f"note: {note}")


def run(args: argparse.Namespace) -> int:
    if args.check is not None:
        if args.fold < 1:
            raise ConfigError(f"--fold must be >= 1, got {args.fold}")
        info = check_report(args.check, args.fold)
        if args.json:
            print_json(info)
        else:
            print_check(info)
        return 0
    rows = model_rows(args.filter)
    if args.json:
        print_json(rows)
    else:
        print(format_table(["task", "family", "input (C,H,W)", "classes"],
                           [[r["task"], r["family"], "x".join(map(str, r["input_size"])), r["num_classes"]]
                            for r in rows]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list every task; --check FILE validates a model description",
                            description="List every task with its family, input size and class count, or "
                                        "validate a model description (--check FILE) and print the "
                                        "architecture it builds: layers, output shapes, params and MACs.")
    parser.add_argument("--filter", default="*", help="fnmatch pattern, e.g. 'lol/*'")
    parser.add_argument("--check", metavar="FILE", help="validate this description JSON and print its model")
    parser.add_argument("--fold", type=int, default=1, help="with --check: the fold to build (default 1)")
    add_json_option(parser)
    parser.set_defaults(func=run)
