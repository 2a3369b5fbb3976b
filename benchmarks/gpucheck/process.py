"""One child process with a timeout; a timeout or a kill of this script also ends what the child started."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    """How a command ended: its exit status (None when killed at its timeout), output and wall seconds."""

    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    budget_cut: bool = False  # the timeout came from the budget, not from the step's own limit

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def why(self) -> str:
        """One line for a step's detail: the timeout, or the exit status and the last line of output."""
        if self.rc is None:
            return f"timed out after {self.seconds:.0f} s" + (" (budget)" if self.budget_cut else "")
        lines = [line for line in (self.stderr or self.stdout).strip().splitlines() if line.strip()]
        return f"exit {self.rc}: {lines[-1][:300] if lines else 'no output'}"


def kill_group(proc: subprocess.Popen[str]) -> None:
    """End the process group that ``proc`` leads (it was started with ``start_new_session=True``)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def execute(argv: Sequence[str], *, timeout: float, env: Mapping[str, str], cwd: Path) -> Result:
    """Run ``argv`` in its own process group (so a timeout also ends e.g. inductor's compile workers)."""
    start = time.monotonic()
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(env),
                            cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return Result(proc.returncode, stdout, stderr, time.monotonic() - start)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        try:
            stdout, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:  # a grandchild outside the group still holds the pipes
            stdout, stderr = "", ""
        return Result(None, stdout or "", stderr or "", time.monotonic() - start)
    except BaseException:  # Ctrl-C or a kill of this script: do not leave the child running
        kill_group(proc)
        raise
