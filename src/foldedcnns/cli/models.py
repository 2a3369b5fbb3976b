"""``foldedcnns models``: list every task with its family, input size and class count."""

from __future__ import annotations

import argparse

from foldedcnns.analysis.report import shape_model
from foldedcnns.cli.common import add_json_option, format_table, print_json
from foldedcnns.models import get_task, list_models


def model_rows(pattern: str = "*") -> list[dict[str, object]]:
    rows = []
    for name in list_models(pattern):
        config = shape_model(name).config
        spec = get_task(name)
        rows.append({"task": name, "family": "compound" if config.compound_phi else spec.family,
                     "input_size": list(config.image_size), "num_classes": spec.num_classes})
    return rows


def run(args: argparse.Namespace) -> int:
    rows = model_rows(args.filter)
    if args.json:
        print_json(rows)
    else:
        print(format_table(["task", "family", "input (C,H,W)", "classes"],
                           [[r["task"], r["family"], "x".join(map(str, r["input_size"])), r["num_classes"]]
                            for r in rows]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list every task with its family, input size and class count")
    parser.add_argument("--filter", default="*", help="fnmatch pattern, e.g. 'lol/*'")
    add_json_option(parser)
    parser.set_defaults(func=run)
