"""Sweeps on one machine: seeds (mean and spread), a fold-1 teacher, a run that fails, a driver killed and restarted.

Tiny runs (15 x 35 crops, 6 training images per class, 1-2 epochs) on one PyTorch thread, so that two sweeps of
the same runs give the same numbers.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from matplotlib.collections import PathCollection, PolyCollection

from foldedcnns.cli.main import main
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.training import loop
from foldedcnns.training.sweep import SweepConfig, accuracy_figure, sweep
from foldedcnns.training.sweep_plan import SWEEP_MARKER
from foldedcnns.training.sweep_ray import probe_out
from foldedcnns.utils.plotting import overlapping_text

BASE = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "device": "cpu", "progress": False, "curriculum": False}
OPTIONS = ["--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--no-progress", "--no-curriculum"]
WAIT_SECONDS = 120


@pytest.fixture(autouse=True)
def one_thread_each() -> Iterator[None]:
    with torch_threads(1):  # the same threads in every sweep of a test: the same numbers
        yield



def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def attempts(out: Path, task: str, fold: int, seed: int) -> list[dict[str, object]]:
    lines = (out / "attempts" / task / f"fold{fold}" / f"seed{seed}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_seeds_give_mean_and_spread_beside_each_run(tmp_path: Path, two_tasks: tuple[list[Path], Path]) -> None:
    descs, data = two_tasks
    out = tmp_path / "sweep"
    result = sweep(SweepConfig(tasks=[str(descs[0])], folds=[1, 2], data=data, out=out, base=BASE, seeds=[0, 1]))
    rows = read_csv(out / "summary.csv")
    assert [(r["fold"], r["seed"], r["status"]) for r in rows] == [("1", "0", "done"), ("1", "1", "done"),
                                                                  ("2", "0", "done"), ("2", "1", "done")]
    assert all(Path(r["run_dir"]) == out / "test" / "a" / f"fold{r['fold']}" / f"seed{r['seed']}" for r in rows)
    folds = read_csv(out / "summary_folds.csv")
    for fold in ("1", "2"):
        runs = [float(r["test_top1"]) for r in rows if r["fold"] == fold]
        mean, std = statistics.fmean(runs), statistics.stdev(runs)
        for row in (r for r in rows if r["fold"] == fold):  # beside every run of the (task, fold)
            assert float(row["test_top1_mean"]) == pytest.approx(mean, rel=1e-5)
            assert float(row["test_top1_std"]) == pytest.approx(std, rel=1e-5, abs=1e-9)
            assert row["seeds_done"] == "2" and row["attempts"] == "1"
        line = next(f for f in folds if f["fold"] == fold)
        assert float(line["test_top1_mean"]) == pytest.approx(mean, rel=1e-5) and line["seeds_done"] == "2"
    for row in rows:  # against the fold-1 run of the same seed
        ref = next(float(r["test_top1"]) for r in rows if r["fold"] == "1" and r["seed"] == row["seed"])
        assert float(row["top1_vs_fold1"]) == pytest.approx(float(row["test_top1"]) - ref, abs=1e-4)
    assert json.loads((out / "summary.json").read_text())["folds"][1]["runs"] == 2
    # The plot: a line through the means, a band of +- one standard deviation, a dot per run.
    fig = accuracy_figure(result.rows)
    ax = fig.axes[0]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [1, 2]
    assert list(line.get_ydata()) == pytest.approx([f["test_top1_mean"] for f in result.folds])
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1
    dots = next(c for c in ax.collections if isinstance(c, PathCollection))
    assert len(dots.get_offsets()) == 4
    assert overlapping_text(fig) == []
    assert (out / "accuracy_vs_fold.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_data_fails_once_the_others_finish_and_a_teacher_goes_first(
        tmp_path: Path, two_tasks: tuple[list[Path], Path], capsys: pytest.CaptureFixture[str]) -> None:
    descs, data = two_tasks
    (data / "test" / "b" / "train" / "a" / "0.png").write_bytes(b"not an image")
    out = tmp_path / "sweep"
    code = main(["sweep", "--tasks", f"{descs[0]},{descs[1]}", "--folds", "1,2", "--data", str(data), "--out", str(out),
                 "--teacher", "fold1", *OPTIONS])
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("foldedcnns: error: 2 of 4 runs did not finish (first: test/b fold 1 seed 0 failed: "
                           "cannot decode image") and str(out / "summary.csv") in last
    rows = {(r["task"], r["fold"]): r for r in read_csv(out / "summary.csv")}
    assert [r["status"] for r in rows.values()] == ["done", "done", "failed", "not run"]
    assert "0.png" in rows["test/b", "1"]["error"] and rows["test/b", "1"]["attempts"] == "1"  # failed once
    assert rows["test/b", "2"]["error"].startswith("its teacher (test/b fold 1 seed 0) failed: cannot decode")
    # The teacher ran first and the student recorded its checkpoint.
    teacher, student = attempts(out, "test/a", 1, 0), attempts(out, "test/a", 2, 0)
    assert teacher[-1]["time"] <= student[0]["time"]
    best = out / "test" / "a" / "fold1" / "seed0" / "best.pt"
    assert rows["test/a", "2"]["teacher"] == str(best)
    result = json.loads((out / "test" / "a" / "fold2" / "seed0" / "result.json").read_text())
    assert result["settings"]["distill_from"] == str(best) and result["teacher"]["teacher"] == str(best)


def test_option_mistakes_are_one_line(tmp_path: Path, two_tasks: tuple[list[Path], Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    descs, data = two_tasks
    common = ["sweep", "--tasks", str(descs[0]), "--data", str(data), "--out", str(tmp_path / "s"), *OPTIONS]
    for extra, message in ((["--cpus-per-run", "2"], "--cpus-per-run is an option of --ray"),
                           (["--seed", "3", "--seeds", "0,1"], "give --seed or --seeds, not both"),
                           (["--seeds", "0,-1"], "--seeds must be a non-empty list of integers >= 0"),
                           (["--seeds", "1,1"], "--seeds lists 1 twice"),
                           (["--folds", "2,4", "--teacher", "fold1"], "add 1 to --folds"),
                           (["--ray", "--gpus-per-run", "1.5"], "--gpus-per-run must be below 1")):
        assert main([*common, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists()


def test_an_out_a_node_cannot_use_is_named(tmp_path: Path) -> None:
    assert "does not exist there" in probe_out(str(tmp_path / "elsewhere"), "t")
    (tmp_path / SWEEP_MARKER).write_text("another\n")
    assert "belongs to another sweep" in probe_out(str(tmp_path), "mine")
    (tmp_path / SWEEP_MARKER).write_text("mine\n")
    assert probe_out(str(tmp_path), "mine") is None and sorted(p.name for p in tmp_path.iterdir()) == [SWEEP_MARKER]


def test_a_sweep_of_the_earlier_layout_is_continued(tmp_path: Path, two_tasks: tuple[list[Path], Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    descs, data = two_tasks
    out = tmp_path / "sweep"
    config = SweepConfig(tasks=[str(descs[0])], folds=[1], data=data, out=out, base={**BASE, "epochs": 1})
    first = sweep(config)
    run_dir = out / "test" / "a" / "fold1"
    for item in (run_dir / "seed0").iterdir():  # what the earlier version wrote: OUT/<task>/fold<f>/
        item.rename(run_dir / item.name)
    (run_dir / "seed0").rmdir()
    monkeypatch.setattr(loop.TrainLoop, "train_epoch", lambda *a: pytest.fail("a finished run was trained again"))
    again = sweep(config)
    assert again.rows[0]["test_top1"] == first.rows[0]["test_top1"] and (run_dir / "seed0" / "result.json").is_file()


CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from foldedcnns.training import loop
    marker, after = Path(sys.argv[1]), int(sys.argv[2])
    original, calls = loop.TrainLoop.train_epoch, [0]

    def slow(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            marker.write_text(str(os.getpid()))
            time.sleep(600)  # the test kills us here
        return original(self, *args, **kwargs)

    loop.TrainLoop.train_epoch = slow
    from foldedcnns.cli.main import main
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow
def test_driver_killed_then_rerun_trains_nothing_twice(tmp_path: Path, two_tasks: tuple[list[Path], Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    descs, data = two_tasks
    out, marker = tmp_path / "sweep", tmp_path / "marker"
    argv = ["sweep", "--tasks", str(descs[0]), "--folds", "1,2", "--seeds", "0,1", "--data", str(data),
            "--out", str(out), "--json", *OPTIONS]
    # Runs in order (1, 0), (1, 1), (2, 0), (2, 1), 2 epochs each: the 6th epoch is the second of run (2, 0).
    with open(tmp_path / "stderr.txt", "w", encoding="utf-8") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), "5", *argv], stdout=subprocess.DEVNULL,
                                 stderr=err)
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while not marker.exists():
            assert child.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the sweep never reached its sixth epoch"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert [r["seed"] for r in read_csv(out / "summary.csv")] == ["0", "1"]  # the two finished runs
    trained = []
    original = loop.TrainLoop.train_epoch

    def counted(self: loop.TrainLoop, epoch: int, active: int) -> dict[str, float | int]:
        trained.append((self.fold, self.cfg.seed, epoch + 1))
        return original(self, epoch, active)

    monkeypatch.setattr(loop.TrainLoop, "train_epoch", counted)
    assert main(argv) == 0
    assert trained == [(2, 0, 2), (2, 1, 1), (2, 1, 2)]  # only what the killed sweep had not finished
    assert [len([e for e in attempts(out, "test/a", f, s) if e["event"] == "start"])
            for f, s in ((1, 0), (1, 1), (2, 0), (2, 1))] == [1, 1, 2, 1]
    rows = read_csv(out / "summary.csv")
    assert [r["resumed_from"] for r in rows] == ["", "", "1", ""]
    monkeypatch.setattr(loop.TrainLoop, "train_epoch", original)
    straight = sweep(SweepConfig(tasks=[str(descs[0])], folds=[1, 2], data=data, out=tmp_path / "straight",
                                 base=BASE, seeds=[0, 1]))
    for row, ref in zip(rows, straight.rows, strict=True):
        assert (row["fold"], row["seed"]) == (str(ref["fold"]), str(ref["seed"]))
        assert float(row["test_top1"]) == pytest.approx(ref["test_top1"], rel=1e-5)
        assert float(row["test_loss"]) == pytest.approx(ref["test_loss"], rel=1e-5)
    assert os.path.exists(out / "accuracy_vs_fold.png")
