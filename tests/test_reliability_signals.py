"""SIGINT and SIGTERM in the middle of every long command: a quick stop, no process left, nothing half-written.

Each test runs the real command line in a child process whose slow step (one function, patched in
the child) writes a marker and then waits, so the signal always lands mid-run: in the main thread
(train, sweep, predict, bench), in a writer thread (noscope-frames) or in worker processes (synth).
The test then checks the exit code (128 + signal), the one line on stderr, that every process the
command started is gone, and what the output folder holds.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import alive, descendants

pytestmark = pytest.mark.slow  # each test starts a Python with torch (a few seconds) in a child process

STOP_SECONDS = 8.0  # from the signal to the exit, on a loaded 2-core machine (typically under 1 s)
START_SECONDS = 120.0  # until the marker appears (imports, data, the first steps)

CHILD = textwrap.dedent("""
    import importlib, os, sys, time
    from pathlib import Path

    marker = Path(os.environ["REL_MARKER"])
    module_name, _, attr = os.environ["REL_SLOW"].partition(":")
    after, pause = int(os.environ.get("REL_AFTER", "0")), float(os.environ["REL_SLEEP"])
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    def slow(*args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            marker.write_text(str(os.getpid()))
            time.sleep(pause)
        return original(*args, **kwargs)

    setattr(owner, name, slow)
    import torch
    torch.set_num_threads(1)
    from foldedcnns.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def run_and_signal(tmp_path: Path, argv: list[str], slow: str, signum: int, *, sleep: float = 60.0,
                   after: int = 0, group: bool = False) -> tuple[int, str, set[int]]:
    """Run ``foldedcnns ARGV`` with ``slow`` patched, send ``signum`` once it is reached (to its whole
    process group with ``group``, as a terminal's Ctrl-C does); return (exit code, stderr, the
    processes the command had started). Whatever happens, no process of the command outlives the call."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("the process-tree check reads /proc (Linux)")
    marker, stderr = tmp_path / "marker", tmp_path / "stderr.txt"
    env = {**os.environ, "REL_MARKER": str(marker), "REL_SLOW": slow, "REL_SLEEP": str(sleep),
           "REL_AFTER": str(after), "XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONWARNINGS": "ignore"}
    started: set[int] = set()
    with open(stderr, "w", encoding="utf-8") as err_file:  # a file: a stray process cannot block the test
        child = subprocess.Popen([sys.executable, "-c", CHILD, *argv], env=env, cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=group)
    try:
        deadline = time.monotonic() + START_SECONDS
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the command ended before the signal: {child.returncode} {stderr.read_text()}")
            assert time.monotonic() < deadline, "the command never reached its slow step"
            time.sleep(0.05)
        time.sleep(0.2)
        started = descendants(child.pid)
        if group:
            os.killpg(child.pid, signum)
        else:
            child.send_signal(signum)
        try:
            child.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the command did not stop within {STOP_SECONDS} s of {signal.Signals(signum).name}")
        deadline = time.monotonic() + 3
        while any(alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {p for p in started if alive(p)}
        assert not left, f"processes left running after the command ended: {sorted(left)}"
    finally:
        for pid in [child.pid, *started]:  # never leave one behind, even when the test fails
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        child.wait()
    return child.returncode, stderr.read_text(encoding="utf-8"), started


def one_line(err: str, signum: int) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"foldedcnns: interrupted by {signal.Signals(signum).name}"), err
    assert "Traceback" not in err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of the atomic writers (``.NAME.*.tmp``, ``.NAME.*.partial``)."""
    return sorted(str(p) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".partial")))


@pytest.mark.parametrize(("signum", "group"), [(signal.SIGTERM, False), (signal.SIGINT, False),
                                               (signal.SIGINT, True)], ids=["SIGTERM", "SIGINT", "Ctrl-C"])
def test_data_synth_ends_its_workers_and_leaves_no_folder(tmp_path, tiny_task_file, signum, group):
    """Ctrl-C in a terminal reaches the workers too: they must neither print tracebacks nor linger."""
    out = tmp_path / "synth"
    code, err, started = run_and_signal(
        tmp_path, ["data", "synth", str(tiny_task_file), str(out), "--per-class", "40", "--workers", "2",
                   "--no-progress"], "foldedcnns.data.synth.generate:render_scene", signum, group=group)
    assert code == 128 + signum
    one_line(err, signum)
    assert len(started) >= 2  # the drawing processes existed, and are gone (checked above)
    assert not out.exists() and not leftovers(tmp_path)


def test_noscope_frames_stops_its_writer_threads_and_leaves_no_folder(tmp_path, tiny_video):
    video = tiny_video()
    out = tmp_path / "frames"
    code, err, _ = run_and_signal(tmp_path, ["data", "noscope-frames", str(video), str(out), "--size", "8",
                                             "--no-progress"], "foldedcnns.data.noscope:write_png",
                                  signal.SIGTERM, sleep=0.5)
    assert code == 143
    one_line(err, signal.SIGTERM)
    assert not out.exists() and not leftovers(tmp_path)


def test_predict_stops_its_decoder_and_keeps_its_rows_beside_the_users_file(tmp_path, tiny_checkpoint, tiny_video):
    video = tiny_video()
    keep = tmp_path / "keep.csv"
    keep.write_text("the user's file\n")
    code, err, _ = run_and_signal(
        tmp_path, ["predict", str(tiny_checkpoint(2)), str(video), "--out", str(keep), "--overwrite",
                   "--batch-size", "4", "--no-progress", "--profile-frames", "0"],
        "foldedcnns.inference.predictor:Predictor.predict_batch", signal.SIGTERM, after=2)
    assert code == 143
    one_line(err, signal.SIGTERM)
    assert keep.read_text() == "the user's file\n"  # an interrupted run never touches an existing file
    partial = list(csv.DictReader((tmp_path / "keep.csv.partial").read_text().splitlines()))
    assert [int(r["frame"]) for r in partial] == list(range(8)) and not leftovers(tmp_path)


def test_bench_stops_and_writes_no_csv(tmp_path, tiny_checkpoint):
    out = tmp_path / "bench.csv"
    code, err, _ = run_and_signal(
        tmp_path, ["bench", "--tasks", str(tiny_checkpoint(1)), "--folds", "1", "--batch-sizes", "4",
                   "--backends", "eager", "--iterations", "2", "--warmup", "0", "--trials", "3",
                   "--peak-seconds", "0", "--out", str(out), "--json"],
        "foldedcnns.benchmark.runner:time_calls", signal.SIGINT, after=1)
    assert code == 130
    one_line(err, signal.SIGINT)
    assert not out.exists() and not leftovers(tmp_path)


def train_args(task_file: Path, data: Path, out: Path, epochs: int = 3) -> list[str]:
    return ["--description", str(task_file), "--data", str(data), "--epochs", str(epochs), "--batch-size", "8",
            "--device", "cpu", "--no-progress", "--no-curriculum", "--out", str(out)]


def test_train_keeps_the_finished_epochs_and_says_how_to_resume(tmp_path, tiny_task, tiny_task_file, image_folder):
    data = image_folder(tiny_task, {"train": 6, "val": 2, "test": 2})
    run = tmp_path / "run"
    code, err, _ = run_and_signal(tmp_path, ["train", *train_args(tiny_task_file, data, run)],
                                  "foldedcnns.training.loop:TrainLoop.train_epoch", signal.SIGTERM, after=1)
    assert code == 143
    line = one_line(err, signal.SIGTERM)
    assert "--resume" in line and str(run) in line
    assert (run / "last.pt").is_file() and not leftovers(tmp_path)
    with open(run / "metrics.csv", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 1  # epoch 1 finished; epoch 2 was cut


def test_train_stopped_before_its_first_epoch_removes_the_run_folder(tmp_path, tiny_task, tiny_task_file,
                                                                      image_folder):
    data = image_folder(tiny_task, {"train": 6, "val": 2, "test": 2})
    run = tmp_path / "run"
    code, err, _ = run_and_signal(tmp_path, ["train", *train_args(tiny_task_file, data, run)],
                                  "foldedcnns.training.loop:TrainLoop.train_epoch", signal.SIGINT)
    assert code == 130
    assert "was removed" in one_line(err, signal.SIGINT)
    assert not run.exists()


def test_sweep_keeps_finished_runs_and_restarts(tmp_path, tiny_task, tiny_task_file, image_folder):
    data = image_folder(tiny_task, {"train": 6, "val": 2, "test": 2})
    out = tmp_path / "sweep"
    argv = ["sweep", "--tasks", str(tiny_task_file), "--folds", "1,2", "--data", str(data), "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress", "--no-curriculum", "--json"]
    code, err, _ = run_and_signal(tmp_path, argv, "foldedcnns.training.loop:TrainLoop.train_epoch",
                                  signal.SIGTERM, after=1)
    assert code == 143
    assert "run the same sweep command again" in one_line(err, signal.SIGTERM)
    with open(out / "summary.csv", encoding="utf-8") as handle:
        assert [row["fold"] for row in csv.DictReader(handle)] == ["1"]
    assert not leftovers(tmp_path)


@pytest.fixture(scope="module")
def segmented_clip(tmp_path_factory) -> Path:
    """200 frames of 128 x 96 with a keyframe every 10: many segments for the decoding processes."""
    pytest.importorskip("av", reason="PyAV is not installed; pip install 'foldedcnns[video]' to run this test")
    import numpy as np

    from foldedcnns.data.video import write_video

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("segmented") / "clip.mp4"
    write_video(path, (rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for _ in range(200)),
                options={"g": "10", "preset": "ultrafast"})
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_predict_with_two_decoders_stops_them_and_keeps_its_rows(tmp_path, tiny_checkpoint, segmented_clip, signum):
    out = tmp_path / "rows.csv"
    code, err, started = run_and_signal(
        tmp_path, ["predict", str(tiny_checkpoint(2)), str(segmented_clip), "--out", str(out), "--batch-size", "4",
                   "--no-progress", "--decoders", "2"],
        "foldedcnns.inference.predictor:Predictor.predict_batch", signum, after=2)
    assert code == 128 + signum and len(started) >= 2  # the two decoding processes were running
    assert "kept the 8 rows classified before it in" in one_line(err, signum)
    rows = list(csv.DictReader((tmp_path / "rows.csv.partial").read_text().splitlines()))
    assert [int(r["frame"]) for r in rows] == list(range(8)) and not out.exists() and not leftovers(tmp_path)


def test_scrape_stops_its_decoders_and_keeps_its_rows(tmp_path, tiny_checkpoint, segmented_clip):
    ckpt = tiny_checkpoint(2)
    spec = tmp_path / "spec.json"
    spec.write_text(f'{{"tasks": [{{"name": "a", "checkpoint": "{ckpt}", "batch_size": 4}}, '
                    f'{{"name": "b", "checkpoint": "{ckpt}", "crop": "0,0,64,48", "batch_size": 4}}]}}')
    code, err, started = run_and_signal(
        tmp_path, ["scrape", str(spec), str(segmented_clip), "--out", str(tmp_path / "out"), "--no-progress",
                   "--decoders", "2"],
        "foldedcnns.inference.predictor:Predictor.predict_batch", signal.SIGTERM, after=3)
    assert code == 143 and len(started) >= 2
    line = one_line(err, signal.SIGTERM)
    assert "rows classified before it in" in line
    rows = list(csv.DictReader((tmp_path / "out" / "clip.csv.partial").read_text().splitlines()))
    assert rows and [int(r["frame"]) for r in rows] == list(range(len(rows))) and "b_label" in rows[0]
