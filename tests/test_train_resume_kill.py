"""A run killed with SIGKILL in the middle of an epoch resumes with --resume and ends like an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from foldedcnns.cli.main import main
from foldedcnns.runtime.checkpoint import load_checkpoint
from foldedcnns.training.trainer import TrainConfig, train

EPOCHS = 4
KILL_EPOCH = 3  # killed during its second batch, after last.pt of epoch 2 was written
WAIT_SECONDS = 120

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from foldedcnns.training.trainer import TrainConfig, train
    torch.set_num_threads(1)
    desc, data, out, marker, epochs, kill_epoch = sys.argv[1:7]

    def on_batch(epoch, step):
        if epoch == int(kill_epoch) and step == 1:
            Path(marker).write_text("in the middle of an epoch")
            time.sleep(600)  # the parent kills us here

    train(TrainConfig(task=desc, data=data, out=out, fold=2, epochs=int(epochs), batch_size=8, lr=3e-3,
                      progress=False, device="cpu", seed=7, curriculum=False), on_batch=on_batch)
""")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(tmp_path: Path, tiny_train_files: Callable[..., tuple[Path, Path]]) -> None:
    desc, data = tiny_train_files({"train": 13, "val": 4, "test": 4})
    run, marker = tmp_path / "killed", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(desc), str(data), str(run), str(marker), str(EPOCHS),
                              str(KILL_EPOCH)], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + WAIT_SECONDS
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else "child exited"
        assert time.monotonic() < deadline, "the child never reached the middle of an epoch"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert load_checkpoint(run / "last.pt")["epoch"] == KILL_EPOCH - 1  # lost only the epoch it was in
    assert not list(run.glob(".*.tmp"))  # killed outside a save: no temporary file left

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["train", "--description", str(desc), "--data", str(data), "--fold", "2", "--epochs", str(EPOCHS),
                     "--batch-size", "8", "--lr", "3e-3", "--device", "cpu", "--seed", "7", "--out", str(run),
                     "--resume", "--no-progress", "--no-curriculum"])
        assert code == 0
        straight = train(TrainConfig(task=str(desc), data=data, out=tmp_path / "straight", fold=2, epochs=EPOCHS,
                                     batch_size=8, lr=3e-3, progress=False, device="cpu", seed=7, curriculum=False))
    finally:
        torch.set_num_threads(threads)

    with open(run / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    resumed_top1 = float(rows[-1]["test_top1"])
    assert abs(resumed_top1 - straight.history[-1]["test_top1"]) <= 100.0 / 12 + 1e-9  # within one test image
    resumed = load_checkpoint(run / "last.pt")
    assert resumed["epoch"] == EPOCHS
    # Full optimizer and RNG restore: the weights match the uninterrupted run to float precision.
    final = load_checkpoint(straight.last_checkpoint)["state_dict"]
    assert all(torch.allclose(final[k], resumed["state_dict"][k], atol=1e-5) for k in final)
