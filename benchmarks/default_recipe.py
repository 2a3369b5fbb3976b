"""Does the default recipe train FoldedCNNs as well as the original CNN? A real and a synthetic check.

    .venv/bin/python benchmarks/default_recipe.py --work /tmp/default_recipe          # the full measurement
    .venv/bin/python benchmarks/default_recipe.py --work /tmp/dr_tiny --tiny          # dry run, ~1-2 minutes

Real images: scikit-learn's handwritten digits (``benchmarks/real_digits.py``: 1,198 train / 299 val /
300 test, 24x24 RGB, 10 classes, described in the original's nested format), trained for each fold and
seed with the command a user tries first, and no other flag than ``--out`` and ``--seed``::

    foldedcnns train --description digits.json --data D --fold F --epochs 100 --out RUN [--seed 1]

Synthetic: ``foldedcnns data synth lol/goldnumber-fraction D --per-class 1500`` (11,550 / 2,475 / 2,475
crops), then ``foldedcnns train lol/goldnumber-fraction --data D --fold F --epochs E --out RUN``.

Prints, per data set, the test Top-1 of ``best.pt`` per fold and seed, the mean, the difference to f = 1,
the time of the epochs (``result.json``) and the wall time of the whole command, and whether f = 2
and f = 4 are within 1 point of f = 1 and take at most its wall time.
Runs that finished (``RUN/result.json``) are reused, so an interrupted measurement continues where it
stopped; ``--fresh`` reruns everything. One run at a time, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from real_digits import write_digits

SYNTH_TASK = "lol/goldnumber-fraction"
WITHIN_POINTS = 1.0


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def run_train(args: list[str], run_dir: Path, fresh: bool) -> dict[str, float]:
    """``foldedcnns train ... --out run_dir`` in a subprocess (reused if it finished); test Top-1 and wall."""
    result_path = run_dir / "result.json"
    if fresh or not result_path.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "foldedcnns.cli.main", "train", *args, "--out", str(run_dir)]
        log = run_dir.parent / f"{run_dir.name}.log"
        print("  $ foldedcnns", " ".join(command[3:]), flush=True)
        started = time.perf_counter()
        with open(log, "w", encoding="utf-8") as handle:
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"training failed (exit {done.returncode}); see {log}")
        (run_dir / "wall.json").write_text(json.dumps({"wall_s": wall}), encoding="utf-8")
    result = json.loads(result_path.read_text(encoding="utf-8"))
    wall = json.loads((run_dir / "wall.json").read_text(encoding="utf-8"))["wall_s"]
    return {"test_top1": float(result["best"]["test_top1"]), "train_s": float(result["seconds"]), "wall_s": wall,
            "slot_warmup": result["settings"]["recipe"]["slot_warmup"]}


def table(title: str, runs: dict[int, list[dict[str, float]]], seeds: list[int]) -> tuple[str, list[str]]:
    """Markdown table (one row per fold) and the verdict lines."""
    base = statistics.mean(r["test_top1"] for r in runs[min(runs)])
    base_wall = statistics.mean(r["wall_s"] for r in runs[min(runs)])
    lines = [title, "", "| fold | " + " | ".join(f"seed {s}" for s in seeds) +
             " | mean test Top-1 % | vs f=1 | slot warm-up | epochs s (mean) | wall s (mean) | wall vs f=1 |",
             "|---|" + "---|" * len(seeds) + "---|---|---|---|---|---|"]
    verdicts = []
    for fold, rows in sorted(runs.items()):
        mean = statistics.mean(r["test_top1"] for r in rows)
        wall = statistics.mean(r["wall_s"] for r in rows)
        epochs_s = statistics.mean(r["train_s"] for r in rows)
        cells = " | ".join(f"{r['test_top1']:.2f}" for r in rows)
        lines.append(f"| {fold} | {cells} | {mean:.2f} | {mean - base:+.2f} | {rows[0]['slot_warmup']} | "
                     f"{epochs_s:.0f} | {wall:.0f} | {wall / base_wall:.2f} |")
        if fold != min(runs):
            ok = mean >= base - WITHIN_POINTS
            first = min(runs)
            verdicts.append(f"{title.split(':')[0]} f={fold}: {'PASS' if ok else 'FAIL'} within {WITHIN_POINTS:g} "
                            f"point of f={first} ({mean - base:+.2f}); wall {wall / base_wall:.2f}x of f={first}")
    return "\n".join(lines), verdicts


def real_check(work: Path, folds: list[int], seeds: list[int], epochs: int, fresh: bool) -> tuple[str, list[str]]:
    root = work / "digits"
    if not (root / "digits.json").exists():
        counts = write_digits(root, overwrite=True)
        print(f"digits: {counts}", flush=True)
    runs: dict[int, list[dict[str, float]]] = {}
    for fold in folds:
        for seed in seeds:
            args = ["--description", str(root / "digits.json"), "--data", str(root / "data"), "--fold", str(fold),
                    "--epochs", str(epochs)] + (["--seed", str(seed)] if seed else [])
            runs.setdefault(fold, []).append(run_train(args, work / "runs" / f"digits_f{fold}_s{seed}", fresh))
    return table(f"real: digits 24x24 (1,198 train / 299 val / 300 test), {epochs} epochs, default recipe", runs, seeds)


def synth_check(work: Path, folds: list[int], seeds: list[int], epochs: int, per_class: int,
                fresh: bool) -> tuple[str, list[str]]:
    data = work / f"synth_{per_class}"
    if not (data / "test").exists():
        shutil.rmtree(data, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "foldedcnns.cli.main", "data", "synth", SYNTH_TASK, str(data),
                        "--per-class", str(per_class)], check=True)
    runs: dict[int, list[dict[str, float]]] = {}
    for fold in folds:
        for seed in seeds:
            args = [SYNTH_TASK, "--data", str(data), "--fold", str(fold), "--epochs", str(epochs)]
            args += ["--seed", str(seed)] if seed else []
            runs.setdefault(fold, []).append(run_train(args, work / "runs" / f"synth{per_class}_f{fold}_s{seed}",
                                                       fresh))
    return table(f"synthetic: {SYNTH_TASK} ({per_class} per class), {epochs} epochs, default recipe", runs, seeds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data, runs and summary.md")
    parser.add_argument("--folds", default="1,2,4")
    parser.add_argument("--seeds", default="0,1", help="seeds of the real-image runs (default 0,1)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs of the real-image runs (default 100)")
    parser.add_argument("--synth-seeds", default="0", help="seeds of the synthetic runs (default 0)")
    parser.add_argument("--synth-epochs", type=int, default=100, help="epochs of the synthetic runs (default 100)")
    parser.add_argument("--per-class", type=int, default=1500, help="synthetic images per class (default 1500)")
    parser.add_argument("--only", choices=("real", "synth"), help="run one of the two checks")
    parser.add_argument("--tiny", action="store_true", help="dry run: 2 epochs, 20 synthetic images per class")
    parser.add_argument("--fresh", action="store_true", help="rerun finished runs too")
    args = parser.parse_args(argv)
    if args.tiny:
        args.epochs, args.synth_epochs, args.per_class = 2, 2, 20
    folds = parse_ints(args.folds)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts, verdicts = [], []
    if args.only in (None, "real"):
        text, lines = real_check(args.work, folds, parse_ints(args.seeds), args.epochs, args.fresh)
        parts.append(text)
        verdicts += lines
    if args.only in (None, "synth"):
        text, lines = synth_check(args.work, folds, parse_ints(args.synth_seeds), args.synth_epochs, args.per_class,
                                  args.fresh)
        parts.append(text)
        verdicts += lines
    summary = "\n\n".join(parts) + "\n\n" + "\n".join(verdicts) + "\n"
    (args.work / "summary.md").write_text(summary, encoding="utf-8")
    print("\n" + summary + f"\n(total {time.perf_counter() - started:.0f} s; written to {args.work / 'summary.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
