"""Wall time of a 4-run training sweep, one run after another in one process vs as Ray tasks on this machine.

    .venv/bin/python benchmarks/sweep_ray.py --work /tmp/sweep_ray                # the measurement for docs/training.md
    .venv/bin/python benchmarks/sweep_ray.py --work /tmp/sweep_ray_quick --quick  # a check that it runs (~1 minute)

The sweep is ``foldedcnns sweep --tasks lol/goldnumber-fraction --folds 1,2 --seeds 0,1`` (4 runs) on
``foldedcnns data synth lol/goldnumber-fraction D --per-class N``, run as the user types it, in a subprocess:

* local: the runs one after another in the command's own process, PyTorch's default threads (all cores);
* ray: ``--ray --cpus-per-run C``: a local Ray on all CPUs, each run a Ray task with C CPUs (C threads), so
  ``CPUs / C`` runs train at once. The wall time includes starting Ray and its workers.

Each trial sweeps into a fresh OUT; the two ways alternate within a trial and swap their order every trial
(interleaved, so a slow spell of the machine hits both). Prints the machine (lscpu model name, CPUs, load),
every trial and a Markdown table of the medians, with the sum of the runs' training-loop seconds from
``summary.csv`` (how much work was done, beside how long it took).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TASK = "lol/goldnumber-fraction"
MODES = ("local", "ray")


def cpu_model() -> str:
    """``lscpu``'s model name (or the platform's processor string without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown CPU")


def foldedcnns(*args: str) -> list[str]:
    return [sys.executable, "-m", "foldedcnns.cli.main", *args]


def make_data(work: Path, per_class: int) -> Path:
    data = work / f"data{per_class}"
    if not (data / "test").is_dir():
        subprocess.run(foldedcnns("data", "synth", TASK, str(data), "--per-class", str(per_class), "--overwrite",
                                  "--no-progress"), check=True)
    return data


def run_sweep(mode: str, data: Path, out: Path, epochs: int, cpus_per_run: float) -> tuple[float, float]:
    """One sweep as a subprocess into a fresh ``out``; (wall seconds, sum of the runs' training seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    command = foldedcnns("sweep", "--tasks", TASK, "--folds", "1,2", "--seeds", "0,1", "--data", str(data),
                         "--out", str(out), "--epochs", str(epochs), "--device", "cpu", "--no-progress", "--json")
    if mode == "ray":
        command += ["--ray", "--cpus-per-run", f"{cpus_per_run:g}"]
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{mode} sweep failed (exit {done.returncode}); see {log}")
    with open(out / "summary.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != 4 or any(r["status"] != "done" for r in rows):
        raise SystemExit(f"{mode} sweep did not finish its 4 runs; see {out / 'summary.csv'}")
    return wall, sum(float(r["seconds"]) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the data and the sweeps")
    parser.add_argument("--per-class", type=int, default=300, help="synthetic images per class (default 300)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    parser.add_argument("--trials", type=int, default=3, help="interleaved trials (default 3)")
    parser.add_argument("--cpus-per-run", type=float, default=1.0, help="--cpus-per-run of the Ray sweep (default 1)")
    parser.add_argument("--quick", action="store_true", help="a check that the script runs: 20 images per class, "
                                                              "1 epoch, 1 trial")
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.epochs, args.trials = 20, 1, 1
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {cpu_model()}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}", flush=True)
    data = make_data(args.work, args.per_class)
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    work: dict[str, list[float]] = {m: [] for m in MODES}
    for trial in range(args.trials):
        for mode in MODES if trial % 2 == 0 else reversed(MODES):
            wall, seconds = run_sweep(mode, data, args.work / f"{mode}{trial}", args.epochs, args.cpus_per_run)
            walls[mode].append(wall)
            work[mode].append(seconds)
            print(f"trial {trial} {mode}: wall {wall:.1f} s, runs' training loops {seconds:.1f} s", flush=True)
    local = statistics.median(walls["local"])
    print()
    print(f"4-run sweep ({TASK}, folds 1,2 x seeds 0,1, {args.per_class} images per class, {args.epochs} epochs, "
          f"--device cpu), median of {args.trials} interleaved trial(s), {cpu_model()}, {os.cpu_count()} CPUs:")
    print()
    print("| sweep | wall s (median) | trials s | runs' training loops s (median sum) | wall vs local |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        label = "local (one process)" if mode == "local" else f"--ray --cpus-per-run {args.cpus_per_run:g}"
        median = statistics.median(walls[mode])
        print(f"| {label} | {median:.1f} | {', '.join(f'{w:.1f}' for w in walls[mode])} | "
              f"{statistics.median(work[mode]):.1f} | {median / local:.2f}x |")


if __name__ == "__main__":
    main()
