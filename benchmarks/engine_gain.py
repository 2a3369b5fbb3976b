"""What the engines of issue 11 (OpenVINO, INT8) gained, from a headline run's own files; no timing.

    .venv/bin/python benchmarks/engine_gain.py [--results benchmarks/results] [--device cpu]

Reads ``headline_<device>.csv`` (final trials), ``headline_<device>_screen.csv`` (screening) and
``headline_<device>_previous_run.json`` (the headline before the new engines) and prints, per task, a
Markdown table:

* best original and best folded of the run (any engine, precision and batch size on both sides) and
  their ratio, against the 1.5x target that now holds for game and NoScope tasks alike;
* the best images/s of the run against the previous headline's best (another day, so the host's speed
  differs too) and against the best configuration of the previous search space (compile bf16,
  onnxruntime fp32, ...) timed in this run's screening, at the screening batch: the same-run view.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from foldedcnns.benchmark.records import BenchRecord, read_csv
from foldedcnns.benchmark.summary import best_configs, summarize
from foldedcnns.utils.text import markdown_table

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5  # best folded / best original
GAIN_TARGET = 2.5  # best images/s / the previous headline's best
NEW_BACKENDS = ("openvino",)
NEW_PRECISIONS = ("int8",)


def is_new(backend: str, precision: str) -> bool:
    """Whether a configuration exists only since the new engines (OpenVINO, or INT8 on any engine)."""
    return backend in NEW_BACKENDS or precision in NEW_PRECISIONS


def previous_best(run_file: Path) -> dict[str, float]:
    """Best images/s per task of a saved headline run."""
    best: dict[str, float] = defaultdict(float)
    for b in json.loads(run_file.read_text(encoding="utf-8"))["best"]:
        best[b["model"]] = max(best[b["model"]], float(b["throughput"]))
    return dict(best)


def screen_best(records: list[BenchRecord]) -> dict[str, tuple[tuple[str, float], tuple[str, float]]]:
    """Per task, the best (label, images/s) of the old and of the new configurations in the screening."""
    old: dict[str, tuple[str, float]] = {}
    new: dict[str, tuple[str, float]] = {}
    for row in summarize(records):
        table = new if is_new(row.backend, row.precision) else old
        label = f"f={row.fold} {row.backend} {row.precision} B={row.batch_size}"
        if row.throughput > table.get(row.model, ("", 0.0))[1]:
            table[row.model] = (label, row.throughput)
    return {m: (old[m], new[m]) for m in old if m in new}


def gain_table(final: list[BenchRecord], screen: list[BenchRecord], previous: dict[str, float]) -> str:
    rows = []
    screened = screen_best(screen)
    best = best_configs(final)
    for model in dict.fromkeys(b.model for b in best):
        mine = [b for b in best if b.model == model]
        original = next(b for b in mine if b.mode == "Original")
        folded = max((b for b in mine if b.mode == "Folded"), key=lambda b: b.throughput)
        top = max(mine, key=lambda b: b.throughput)
        ratio = folded.speedup or 0.0
        (old_label, old_tput), (_, new_tput) = screened.get(model, (("n/a", 0.0), ("n/a", 0.0)))
        gain = top.throughput / previous[model] if model in previous else None
        rows.append([
            model, f"{original.config}: {original.throughput:,.0f}",
            f"f={folded.fold} {folded.config}: {folded.throughput:,.0f}",
            f"{ratio:.2f}x" + ("" if ratio >= TARGET else " (**no**)"),
            f"{previous.get(model, 0):,.0f}",
            "n/a" if gain is None else f"{gain:.2f}x" + ("" if gain >= GAIN_TARGET else " (**no**)"),
            f"{old_label}: {old_tput:,.0f}", f"{new_tput / old_tput:.2f}x" if old_tput else "n/a",
        ])
    headers = ["task", "best original", "best folded", f"ratio (target {TARGET}x)", "previous headline's best",
               f"best now / previous (target {GAIN_TARGET}x)", "best old configuration in this run's screening",
               "best new / best old, same screening"]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    name = f"headline_{args.device}"
    final = read_csv(args.results / f"{name}.csv")
    screen = read_csv(args.results / f"{name}_screen.csv")
    print(gain_table(final, screen, previous_best(args.results / f"{name}_previous_run.json")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
