"""One command for a bare GPU machine: check, test and benchmark foldedcnns there, inside a time budget.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu    # the GPU run (default --budget-s 480)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc   # CPU dry run, under 2 minutes

It needs no network and no install: it imports foldedcnns from ``src/`` (torch must be there), and every
foldedcnns call is ``python -m foldedcnns.cli.main`` with ``src/`` on ``PYTHONPATH``. The parts live in
``benchmarks/gpucheck/`` (see its ``__init__``). Steps, in order:

1. ``versions``: Python, torch, CUDA, cuDNN, GPU name, onnxruntime providers, OpenCV/PyAV; the task list
   (``foldedcnns models --json``, families game and noscope).
2. ``peak``: ``foldedcnns peak`` at every precision benchmarked; the ceiling for Utilization.
3. ``pytest``: ``pytest -q -m gpu tests/test_gpu.py``.
4. ``train``: a tiny synthetic set (``foldedcnns data synth``), then a 1-epoch fold-2 run (``--amp`` on CUDA).
5. ``predict``: a generated video through ``foldedcnns predict`` with that checkpoint (eager fp32, and
   cuda-graphs fp16 on CUDA); the CSV must hold one row per frame.
6. ``headline``: ``foldedcnns bench --json`` once per task (folds 1-4; eager, channels-last, cuda-graphs;
   fp16 and bf16; batch 256, 1024, 4096; interleaved trials, medians), then the originals in fp32, then
   the compile backend at each task's best folded precision and batch (folds 1 and the best fold), then
   larger batches while throughput still grows. Each stage takes only what the budget leaves.
7. ``summary``: the files below, rewritten after every step so an interrupted run still leaves them.

It writes at most 8 files to ``--out`` (what a device run brings back): ``summary.md`` (steps, peaks
and the best-original / best-folded table), ``best.csv`` (that table), ``bench.csv`` (every bench
record, the ``foldedcnns bench`` CSV format), ``steps.json`` (versions, per-step status, times,
notices), ``log.txt`` (every command and its output), ``pytest.txt`` and ``predict.csv``. Scratch
(data, run, video, per-call CSVs) goes to ``--work`` (a temporary folder, removed unless
``--keep-work``). Exit status 1 if a step failed (the summary is still written), else 0; steps skipped
for the device or cut by the budget are not failures.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # foldedcnns runs uninstalled on the GPU machine

from gpucheck.headline import do_headline
from gpucheck.plan import DEFAULT_BUDGET_S, QUICK_BUDGET_S, RESERVE_S
from gpucheck.report import write_reports
from gpucheck.session import Session
from gpucheck.steps import do_peak, do_predict, do_pytest, do_train, do_versions, snapshot_gpu

OPTIONAL_STEPS = ("peak", "pytest", "train", "predict", "headline")


def run_check(session: Session) -> int:
    """Every step in order, then the summary (also printed); 1 if a step failed, else 0."""
    need_import = session.importable
    session.step("versions", do_versions)
    session.step("peak", do_peak, min_s=10, requires=need_import)
    session.step("pytest", do_pytest, min_s=30, requires=need_import)
    session.step("train", do_train, min_s=20, requires=need_import)
    session.step("predict", do_predict, min_s=10, requires=lambda: need_import() or (
        None if session.checkpoint else "no checkpoint from the train step"))
    snapshot_gpu(session, "before headline")
    session.step("headline", do_headline, min_s=20,
                 requires=lambda: need_import() or (None if session.tasks else "no tasks"))
    snapshot_gpu(session, "after headline")
    write_reports(session)
    if not session.args.keep_work and not session.args.work:
        shutil.rmtree(session.work, ignore_errors=True)
    status = session.status()
    sys.stdout.write((session.out / "summary.md").read_text(encoding="utf-8"))
    print(f"gpu_check: {status} in {session.elapsed():.1f} s; wrote {session.out}/summary.md", file=sys.stderr)
    return 0 if status == "ok" else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for summary.md, best.csv, bench.csv, steps.json, ...")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run)")
    parser.add_argument("--quick", action="store_true", help="tiny grid: 2 tasks, folds 1-2, tiny batches, 1 trial")
    parser.add_argument("--budget-s", type=float, help=f"wall-clock budget in seconds (default {DEFAULT_BUDGET_S:.0f}, "
                                                       f"with --quick {QUICK_BUDGET_S:.0f})")
    parser.add_argument("--tasks", nargs="+", help="benchmark these tasks instead of every game and NoScope task")
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary scratch folder")
    parser.add_argument("--skip", nargs="+", default=[], choices=OPTIONAL_STEPS, metavar="STEP",
                        help=f"leave out steps, from {', '.join(OPTIONAL_STEPS)} (e.g. on a second run)")
    args = parser.parse_args(argv)
    if args.device not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", args.device):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.budget_s is None:
        args.budget_s = QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S
    if args.budget_s <= RESERVE_S:
        parser.error(f"--budget-s must be more than {RESERVE_S:.0f}")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through process.execute, which ends the running child's group


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    return run_check(Session(args))


if __name__ == "__main__":
    raise SystemExit(main())
