"""The state of one GPU check: its budget clock, log, notices, steps and results so far.

The steps (:mod:`gpucheck.steps`, :mod:`gpucheck.headline`) are functions of a :class:`Session`; it runs
every command through :meth:`Session.run`, which cuts the timeout to the budget left and logs the
command with its output. Tests replace ``clock`` and ``execute`` to simulate a machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from foldedcnns.benchmark.records import BenchRecord
from gpucheck.plan import RESERVE_S, make_plan
from gpucheck.process import Result, execute
from gpucheck.report import write_reports

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
LOG_CHARS = 20_000  # per captured stream in log.txt


class Execute(Protocol):
    """Runs one command within ``timeout`` seconds (:func:`gpucheck.process.execute`, or a test's simulation)."""

    def __call__(self, argv: Sequence[str], *, timeout: float, env: dict[str, str], cwd: Path) -> Result: ...


@dataclass
class Step:
    """One step's outcome, as steps.json and summary.md show it."""

    name: str
    status: str = "running"  # ok, failed, skipped, budget
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Session:
    """One run of the GPU check: what it was asked (``args``), what it measured, and how much time is left."""

    def __init__(self, args: argparse.Namespace, *, clock: Callable[[], float] = time.monotonic,
                 execute: Execute = execute) -> None:
        self.args = args
        self.device: str = args.device
        self.cuda = args.device.startswith("cuda")
        self.plan = make_plan(args.device, args.quick)
        self.clock, self.execute = clock, execute
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = clock()
        self.budget_s = float(args.budget_s)
        self.steps: list[Step] = []
        self.notices: list[str] = []
        self.versions: dict[str, Any] = {}
        self.tasks: list[str] = []
        self.peaks: dict[str, float] = {}
        self.headline: dict[str, Any] = {"stages": [], "not_measured": []}
        self.checkpoint: Path | None = None
        self.core_seconds = self.plan.seconds[1]
        self.records: list[BenchRecord] = []  # every bench call's records, in order
        self.bench_calls = 0
        self.gpu_state: list[dict[str, Any]] = []
        self.started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.log = self.out / "log.txt"
        self.log.write_text(f"gpu_check started {self.started}: {' '.join(sys.argv)}\n", encoding="utf-8")

    # ---- time

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def remaining(self) -> float:
        """Seconds left for work: the budget less what has passed and the reserve for the summary."""
        return self.budget_s - self.elapsed() - RESERVE_S

    def notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
            print(f"notice: {text}", file=sys.stderr, flush=True)

    # ---- commands

    def env(self) -> dict[str, str]:
        """This environment with ``src/`` first on ``PYTHONPATH``: foldedcnns runs uninstalled."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def run(self, argv: Sequence[str], *, limit_s: float) -> Result:
        """Run a command with a timeout of ``limit_s`` cut to the budget left; log it and its output."""
        timeout = min(limit_s, max(1.0, self.remaining()))
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"\n$ {' '.join(argv)}  # timeout {timeout:.0f} s\n")
        result = self.execute(list(argv), timeout=timeout, env=self.env(), cwd=ROOT)
        result.budget_cut = result.rc is None and timeout < limit_s
        with open(self.log, "a", encoding="utf-8") as log:
            log.write(f"# rc={result.rc} in {result.seconds:.1f} s\n")
            for name, stream in (("stdout", result.stdout), ("stderr", result.stderr)):
                if stream.strip():
                    cut = stream if len(stream) <= LOG_CHARS else "[...]\n" + stream[-LOG_CHARS:]
                    log.write(f"--- {name}\n{cut.rstrip()}\n")
        return result

    def cli(self, *args: str, limit_s: float = 600) -> Result:
        """``foldedcnns ARGS`` from ``src/``, as a child process."""
        return self.run([sys.executable, "-m", "foldedcnns.cli.main", *args], limit_s=limit_s)

    @staticmethod
    def json_of(result: Result) -> Any:
        """The command's stdout as JSON, or None when it failed or printed something else."""
        if not result.ok:
            return None
        try:
            return json.loads(result.stdout)
        except (json.JSONDecodeError, TypeError):
            return None

    # ---- steps

    def step(self, name: str, func: Callable[[Session, Step], None], *, min_s: float = 0.0,
             requires: Callable[[], str | None] | None = None) -> Step:
        """Run one step; a missing requirement or too little budget skips it, an exception fails it.
        The report files are rewritten after every step, so an interrupted run still leaves them."""
        step = Step(name)
        self.steps.append(step)
        start = self.clock()
        missing = "left out by --skip" if name in self.args.skip else (requires() if requires else None)
        if missing:
            step.status, step.detail = "skipped", missing
        elif self.remaining() < min_s:
            step.status, step.detail = "budget", f"skipped: {self.remaining():.0f} s left, needs about {min_s:.0f} s"
        else:
            print(f"[{self.elapsed():6.1f} s] {name} ...", file=sys.stderr, flush=True)
            try:
                func(self, step)
                if step.status == "running":
                    step.status = "ok"
            except Exception as exc:  # a bug in this script or an unexpected output: fail the step, go on
                step.status, step.detail = "failed", f"{type(exc).__name__}: {exc}"
        step.seconds = self.clock() - start
        print(f"[{self.elapsed():6.1f} s] {name}: {step.status} {step.detail}", file=sys.stderr, flush=True)
        write_reports(self)
        return step

    def status(self) -> str:
        """running, FAILED (a step failed) or ok."""
        if any(s.status == "running" for s in self.steps):
            return "running"
        return "FAILED" if any(s.status == "failed" for s in self.steps) else "ok"

    def importable(self) -> str | None:
        """Why steps that need foldedcnns (and CUDA, on a GPU run) cannot run, or None."""
        if not self.versions.get("foldedcnns"):
            return "foldedcnns is not importable (see the versions step)"
        if self.cuda and not self.versions.get("cuda_available"):
            return "CUDA is not available (see the versions step)"
        return None
