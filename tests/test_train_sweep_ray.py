"""Sweeps on a local 2-CPU Ray: the same runs as one machine, a killed worker retried and resumed, a teacher as a
task dependency, a failing run, and SIGTERM on the driver cancelling every task.

One Ray is shared by the module (it takes seconds to start) and shut down after it. Threads are pinned equal:
each Ray run uses ``--cpus-per-run 1`` (one PyTorch thread), and the local sweeps run inside
``torch_threads(1)``. The hooks below run in Ray workers, so this module is pickled by value.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import alive
from foldedcnns.cli.failures import run_command
from foldedcnns.cli.main import main
from foldedcnns.runtime.checkpoint import load_checkpoint
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.training.sweep import SweepConfig, sweep
from foldedcnns.training.sweep_plan import RaySweepOptions, SweepRun
from foldedcnns.training.trainer import TrainConfig, train

pytestmark = pytest.mark.slow  # a local Ray starts in a few seconds, and each worker imports PyTorch

BASE = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "device": "cpu", "progress": False, "curriculum": False}
OPTIONS = ["--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--no-progress", "--no-curriculum"]
ONE_CPU = RaySweepOptions(cpus_per_run=1)
GONE_SECONDS = 15.0


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hooks below run in the workers
    previous = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, previous)  # ray.init's handler (sys.exit) would outlive the module
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])



def starts(out: Path, task: str, fold: int, seed: int) -> list[dict[str, Any]]:
    path = out / "attempts" / task / f"fold{fold}" / f"seed{seed}.jsonl"
    return [e for e in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if e["event"] == "start"]



@dataclass
class KillOnce:
    """In the worker: SIGKILL the process in the middle of ``epoch`` (its second step), the first time only."""

    marker: str
    epoch: int

    def __call__(self, run: SweepRun, epoch: int, step: int) -> None:
        if epoch == self.epoch and step == 1 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def slow_step(run: SweepRun, epoch: int, step: int) -> None:
    time.sleep(0.15)


def test_ray_gives_the_runs_of_one_machine(ray_cluster: Any, tmp_path: Path,
                                           two_tasks: tuple[list[Path], Path]) -> None:
    descs, data = two_tasks
    config = SweepConfig(tasks=[str(d) for d in descs], folds=[1, 2], data=data, out=tmp_path / "local", base=BASE,
                         seeds=[0, 1])
    with torch_threads(1):
        local = sweep(config)
    config.out, config.ray = tmp_path / "ray", ONE_CPU
    distributed = sweep(config)
    assert [(r["task"], r["fold"], r["seed"]) for r in distributed.rows] == \
        [(t, f, s) for t in ("test/a", "test/b") for f in (1, 2) for s in (0, 1)]
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in distributed.rows)
    for key in ("test_top1", "val_top1", "test_loss", "test_top1_mean", "test_top1_std", "top1_vs_fold1"):
        assert [r[key] for r in distributed.rows] == [r[key] for r in local.rows], key
    assert distributed.folds == [{**f, "seconds_mean": d["seconds_mean"]}
                                 for f, d in zip(local.folds, distributed.folds, strict=True)]
    assert {e["pid"] for r in distributed.rows
            for e in starts(tmp_path / "ray", r["task"], r["fold"], r["seed"])}.isdisjoint({os.getpid()})


def test_a_killed_worker_is_retried_and_resumes(ray_cluster: Any, tmp_path: Path,
                                                two_tasks: tuple[list[Path], Path]) -> None:
    descs, data = two_tasks
    base = {**BASE, "epochs": 3}
    marker = tmp_path / "killed"
    result = sweep(SweepConfig(tasks=[str(descs[0])], folds=[2], data=data, out=tmp_path / "ray", base=base,
                               ray=ONE_CPU), on_batch=KillOnce(str(marker), epoch=2))
    row = result.rows[0]
    assert marker.exists() and not alive(int(marker.read_text()))  # the first worker was killed mid-epoch 2
    assert row["status"] == "done" and row["attempts"] == 2 and row["resumed_from"] == 1  # retried, resumed
    with torch_threads(1):
        straight = train(TrainConfig(task=str(descs[0]), data=data / "test" / "a", out=tmp_path / "straight", fold=2,
                                     seed=0, **base))
    history = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for got, want in zip(history, straight.history, strict=True):
        assert got["test_top1"] == want["test_top1"] and got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-6)
    resumed = load_checkpoint(Path(row["run_dir"]) / "last.pt")["state_dict"]
    final = load_checkpoint(straight.last_checkpoint)["state_dict"]
    assert all(torch.allclose(final[k], resumed[k], atol=1e-6) for k in final)


def test_teacher_is_a_dependency_and_a_failure_is_recorded(ray_cluster: Any, tmp_path: Path,
                                                           two_tasks: tuple[list[Path], Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    descs, data = two_tasks
    (data / "test" / "b" / "train" / "c" / "1.png").write_bytes(b"\x89PNG cut short")
    out = tmp_path / "ray"
    code = main(["sweep", "--tasks", f"{descs[0]},{descs[1]}", "--folds", "1,2", "--data", str(data), "--out",
                 str(out), "--teacher", "fold1", "--ray", "--cpus-per-run", "1", *OPTIONS])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines()[-1].startswith("foldedcnns: error: 2 of 4 runs did not finish")
    assert "failed: test/b fold 1 seed 0: cannot decode image" in err
    assert "not run: test/b fold 2 seed 0: its teacher (test/b fold 1 seed 0) failed: cannot decode image" in err
    assert len(starts(out, "test/b", 1, 0)) == 1  # not retried
    assert not (out / "attempts" / "test" / "b" / "fold2").exists()  # the student never started
    teacher = [json.loads(x) for x in (out / "attempts/test/a/fold1/seed0.jsonl").read_text().splitlines()]
    assert teacher[-1]["event"] == "end" and starts(out, "test/a", 2, 0)[0]["time"] >= teacher[-1]["time"]
    best = out / "test" / "a" / "fold1" / "seed0" / "best.pt"
    assert json.loads((out / "test/a/fold2/seed0/result.json").read_text())["teacher"]["teacher"] == str(best)


def test_sigterm_cancels_every_ray_task(ray_cluster: Any, tmp_path: Path, two_tasks: tuple[list[Path], Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    descs, data = two_tasks
    out = tmp_path / "ray"
    config = SweepConfig(tasks=[str(d) for d in descs], folds=[1, 2], data=data, out=out,
                         base={**BASE, "epochs": 3}, ray=ONE_CPU)

    def training_now() -> list[Path]:
        return [log for log in out.glob("attempts/test/*/fold*/seed0.jsonl")
                if not (out / log.relative_to(out / "attempts").parent / "seed0" / "result.json").exists()]

    def stop_after_the_first(row: dict[str, Any]) -> None:
        deadline = time.monotonic() + GONE_SECONDS
        while not training_now() and time.monotonic() < deadline:  # a run that has started and not ended
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would

    def command(args: argparse.Namespace) -> int:
        sweep(config, on_run=stop_after_the_first, on_batch=slow_step)
        return 0

    assert run_command(command, argparse.Namespace()) == 143
    line = capsys.readouterr().err.strip()
    assert line.startswith("foldedcnns: interrupted by SIGTERM;") and "the Ray tasks were cancelled" in line
    started = [(f, t, e["pid"]) for t in ("test/a", "test/b") for f in (1, 2)
               if (out / "attempts" / t / f"fold{f}" / "seed0.jsonl").exists() for e in starts(out, t, f, 0)]
    assert len(started) >= 2
    unfinished = [pid for f, t, pid in started if not (out / t / f"fold{f}" / "seed0" / "result.json").exists()]
    assert unfinished  # runs were training when the signal came
    deadline = time.monotonic() + GONE_SECONDS
    while any(alive(pid) for pid in unfinished) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in unfinished)  # their workers were killed, not left training
    done = sorted(out.glob("test/*/fold*/seed0/result.json"))
    time.sleep(1.0)
    assert sorted(out.glob("test/*/fold*/seed0/result.json")) == done
