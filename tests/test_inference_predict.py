"""`foldedcnns predict` over image folders, globs and videos: one row per frame, in order, and faults."""

import contextlib
import csv
import errno
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foldedcnns.cli.main import main
from foldedcnns.data.video import iter_frames, write_video
from foldedcnns.inference import Predictor
from foldedcnns.inference.pipeline import DECODE_CORES, RunOptions, model_threads, run_predict
from foldedcnns.models import get_task
from foldedcnns.runtime import Engine


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint, tiny_digits_task) -> Path:
    """The tiny CNN on 22 x 52 RGB images with the classes of lol/goldnumber-fraction (0-9, other), f = 4."""
    return tiny_checkpoint(4, task=tiny_digits_task)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_image_folder_gives_one_row_per_image_in_sorted_order(ckpt, image_files, tmp_path, capsys):
    names = ["b.png", "a.png", "sub/c.png", "sub/a.jpg", "z.bmp", "y.png", "x.png"]
    image_files(tmp_path / "imgs", names)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(ckpt), str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "4",
                 "--no-progress"]) == 0
    rows = read_csv(out)
    order = ["a.png", "b.png", "sub/a.jpg", "sub/c.png", "x.png", "y.png", "z.bmp"]
    assert list(rows[0]) == ["path", "label", "class_name", "score"]
    assert [r["path"] for r in rows] == [str(tmp_path / "imgs" / n) for n in order]
    reference = Predictor(ckpt, batch_size=4).predict(
        [np.asarray(Image.open(tmp_path / "imgs" / n).convert("RGB")) for n in order])
    assert [int(r["label"]) for r in rows] == reference.labels.tolist()
    assert [r["class_name"] for r in rows] == reference.names
    np.testing.assert_allclose([float(r["score"]) for r in rows], reference.scores, atol=1e-6)
    report = capsys.readouterr().out
    assert "end-to-end" in report and "decode only" in report and "model only" in report


def test_glob_and_several_inputs_write_one_csv_each(ckpt, image_files, tmp_path):
    image_files(tmp_path / "a", [f"{i}.png" for i in range(5)])
    image_files(tmp_path / "b", [f"{i}.png" for i in range(3)], seed=1)
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    report = run_predict(ckpt, [str(tmp_path / "a"), str(tmp_path / "b" / "*.png")], tmp_path / "out")
    assert [r.rows for r in report.results] == [5, 3] and report.errors == []
    assert len(read_csv(tmp_path / "out" / "a.csv")) == 5
    assert len(read_csv(tmp_path / "out" / "_.png.csv")) == 3
    assert main(["predict", str(ckpt), str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                 str(tmp_path / "x.csv")]) == 1


def test_the_engine_runs_with_its_own_threads_else_the_models_share_of_the_cores(ckpt, image_files, tmp_path,
                                                                                 capsys):
    pytest.importorskip("onnxruntime")
    image_files(tmp_path / "a", [f"{i}.png" for i in range(6)])
    eager = run_predict(ckpt, [str(tmp_path / "a")], tmp_path / "eager.csv", batch_size=4)
    report = run_predict(ckpt, [str(tmp_path / "a")], tmp_path / "ort.csv", engine=Engine("onnxruntime", threads=1),
                         batch_size=4)
    assert (report.backend, report.device, report.extra["model_threads"]) == ("onnxruntime", "cpu", 1)
    labels = [[r["label"] for r in read_csv(tmp_path / name)] for name in ("ort.csv", "eager.csv")]
    assert labels[0] == labels[1]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert eager.extra["model_threads"] == model_threads(Engine()) == max(1, cores - DECODE_CORES)
    assert model_threads(Engine("openvino", threads=3)) == 3
    assert main(["predict", str(ckpt), str(tmp_path / "a"), "--out", str(tmp_path / "cli.csv"), "--backend",
                 "onnxruntime", "--threads", "1", "--batch-size", "4", "--profile-frames", "0", "--no-progress",
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert (cli["backend"], cli["model_threads"], cli["frames"]) == ("onnxruntime", 1, 6)
    assert read_csv(tmp_path / "cli.csv") == read_csv(tmp_path / "ort.csv")


def test_unreadable_image_keeps_the_rows_before_it(ckpt, image_files, tmp_path, capsys):
    names = [f"{i:03d}.png" for i in range(10)]
    image_files(tmp_path / "imgs", names)
    (tmp_path / "imgs" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(ckpt), str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "4",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot decode image" in err and "005.png" in err
    assert f"kept the 5 rows decoded before it in {out}.partial" in err
    assert [Path(r["path"]).name for r in read_csv(out.with_name(out.name + ".partial"))] == names[:5]
    assert not out.exists()


def test_labelled_folder_of_another_task_is_refused(ckpt, image_files, tmp_path, capsys):
    coral = get_task("noscope/coral")
    image_files(tmp_path / "coral", [f"{c}/0.png" for c in coral.class_names], size=(50, 50))
    assert main(["predict", str(ckpt), str(tmp_path / "coral"), "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert "labelled with classes (no_person, person) that task tiny/digits does not have" in err
    image_files(tmp_path / "apex", ["0/0.png", "1/0.png"], size=(19, 25))
    assert main(["predict", str(ckpt), str(tmp_path / "apex"), "--out", str(tmp_path / "p.csv")]) == 1
    assert "are 25x19 but task tiny/digits reads 52x22 images" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
    assert main(["predict", str(ckpt), str(tmp_path / "apex"), "--out", str(tmp_path / "p.csv"),
                 "--no-task-check", "--no-progress"]) == 0
    assert len(read_csv(tmp_path / "p.csv")) == 2


def test_missing_input_and_bad_batch_size_are_one_line_errors(ckpt, image_files, tmp_path, capsys):
    assert main(["predict", str(ckpt), str(tmp_path / "nothing.mp4"), "--out", str(tmp_path / "p.csv")]) == 1
    assert "does not exist" in capsys.readouterr().err
    image_files(tmp_path / "imgs", ["0.png"])
    assert main(["predict", str(ckpt), str(tmp_path / "imgs"), "--out", str(tmp_path / "p.csv"),
                 "--batch-size", "6"]) == 1
    assert "pass 4 or 8" in capsys.readouterr().err


def moving_frames(count: int, height: int = 48, width: int = 64):
    """Frames that change every step, so consecutive predictions differ."""
    for i in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[:, :, 0] = (i * 7) % 256
        frame[i % height, :, 1] = 255
        frame[:, (i * 3) % width, 2] = 200
        yield frame


@pytest.mark.slow
def test_video_of_2000_frames_gives_exactly_one_row_per_frame_in_order(ckpt, tmp_path, tiny_video):
    video = tiny_video(moving_frames(2000))
    out = tmp_path / "clip.csv"
    assert main(["predict", str(ckpt), str(video), "--out", str(out), "--no-progress", "--profile-frames", "0"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["frame", "label", "class_name", "score"]
    assert [int(r["frame"]) for r in rows] == list(range(2000))
    decoded = [frame for _, frame in iter_frames(video, size=(22, 52))]
    reference = Predictor(ckpt).predict(decoded)
    assert [int(r["label"]) for r in rows] == reference.labels.tolist()
    assert len(set(reference.labels.tolist())) > 1


def test_truncated_video_keeps_the_rows_of_every_good_frame(ckpt, tmp_path, capsys, tiny_video):
    video = tiny_video(moving_frames(300), faststart=True)  # index first: the cut file still opens
    full = run_predict(ckpt, [str(video)], tmp_path / "full.csv", batch_size=8)
    assert full.results[0].rows == 300 and full.errors == []
    data = video.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    out = tmp_path / "cut.csv"
    assert main(["predict", str(ckpt), str(tmp_path / "cut.mp4"), "--out", str(out), "--batch-size", "8",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cut.mp4" in err and "truncated or corrupt" in err
    rows, reference = read_csv(out.with_name(out.name + ".partial")), read_csv(tmp_path / "full.csv")
    assert 0 < len(rows) < 300 and f"kept the {len(rows)} rows decoded before it" in err
    assert [int(r["frame"]) for r in rows] == list(range(len(rows)))
    whole_groups = len(rows) // 4 * 4  # the last, partial group is padded differently
    assert rows[:whole_groups] == reference[:whole_groups]


def test_unreadable_video_is_a_clear_error(ckpt, tmp_path, capsys):
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    assert main(["predict", str(ckpt), str(tmp_path / "junk.mp4"), "--out", str(tmp_path / "p.csv"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "junk.mp4" in err and "not a readable video" in err and "no frame decoded; no CSV written" in err
    assert not (tmp_path / "p.csv").exists()


# -- joined MPEG-TS, FIFOs and stdin -----------------------------------------------------------------------

needs_pyav = pytest.mark.skipif(importlib.util.find_spec("av") is None,
                                reason="PyAV is not installed; pip install 'foldedcnns[video]' to run this test")
# The command line in a child process, as the installed ``foldedcnns`` script runs it.
CLI = "from foldedcnns.cli.main import entry; entry()"
CHILD_SECONDS = 120.0  # a child Python with PyTorch, on a loaded 2-core machine
STOP_SECONDS = 8.0  # from SIGTERM to the exit (docs/reliability.md)


@pytest.fixture(scope="module")
def ts_segment(tmp_path_factory) -> Path:
    """90 changing frames, H.264 in MPEG-TS (a format that streams)."""
    pytest.importorskip("av", reason="PyAV is not installed; pip install 'foldedcnns[video]' to run this test")
    path = tmp_path_factory.mktemp("ts") / "a.ts"
    write_video(path, moving_frames(90))
    return path


def open_writer(fifo: Path, deadline: float) -> int | None:
    """Open ``fifo`` for writing once a reader has opened it (None after ``deadline``, time.monotonic())."""
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: no reader yet
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                return None
            time.sleep(0.02)
            continue
        os.set_blocking(fd, True)
        return fd


def feed_fifo(fifo: Path, data: bytes, seconds: float = 60.0) -> threading.Thread:
    """Write ``data`` into ``fifo`` from a thread once a reader opens it; gives up after ``seconds``."""

    def run() -> None:
        fd = open_writer(fifo, time.monotonic() + seconds)
        if fd is not None:
            write_all(fd, data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@needs_pyav
def test_joined_mpegts_gives_a_row_per_frame_and_counts_the_damaged_packet(ckpt, ts_segment, tmp_path, capsys):
    joined = tmp_path / "joined.ts"
    joined.write_bytes(ts_segment.read_bytes() * 2)  # cat a.ts a.ts > joined.ts
    out = tmp_path / "joined.csv"
    assert main(["predict", str(ckpt), str(joined), "--out", str(out), "--batch-size", "8", "--no-progress",
                 "--profile-frames", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == [] and report["frames"] == 180
    assert report["results"][0]["damaged_packets"] == report["damaged_packets"] >= 1
    rows = read_csv(out)
    assert [int(r["frame"]) for r in rows] == list(range(180))
    single = run_predict(ckpt, [str(ts_segment)], tmp_path / "a.csv", batch_size=8)
    assert single.results[0].damaged_packets == 0 and "damaged_packets" not in single.extra
    assert rows[:88] == read_csv(tmp_path / "a.csv")[:88]  # the first half: the same frames, the same rows


@needs_pyav
def test_a_fifo_is_decoded_once_without_the_profile_pass(ckpt, ts_segment, tmp_path):
    fifo = tmp_path / "camera.ts"
    os.mkfifo(fifo)
    writer = feed_fifo(fifo, ts_segment.read_bytes())
    report = run_predict(ckpt, [str(fifo)], tmp_path / "camera.csv", batch_size=8,
                         run=RunOptions(profile_frames=512))  # the opt-in profile pass cannot reread a stream
    writer.join(30)
    assert not writer.is_alive()
    assert report.errors == [] and report.results[0].rows == 90
    assert report.stages is None and "camera.ts: a stream" in report.extra["profile_skipped"]
    run_predict(ckpt, [str(ts_segment)], tmp_path / "file.csv", batch_size=8)
    assert read_csv(tmp_path / "camera.csv") == read_csv(tmp_path / "file.csv")


@needs_pyav
def test_stdin_writes_one_named_csv_and_needs_a_format_that_streams(ckpt, ts_segment, tmp_path, capsys,
                                                                     monkeypatch):
    assert main(["predict", str(ckpt), "-", "--out", str(tmp_path)]) == 1
    assert "pass - as the only input and --out FILE.csv" in capsys.readouterr().err
    assert main(["predict", str(ckpt), "-", str(ts_segment), "--out", str(tmp_path / "both")]) == 1
    assert "pass - as the only input" in capsys.readouterr().err
    rng = np.random.default_rng(0)  # an MP4 with its index after the frames (no faststart) cannot stream
    mp4 = tmp_path / "noise.mp4"
    write_video(mp4, (rng.integers(0, 256, (48, 64, 3), np.uint8) for _ in range(40)))
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=write_all, args=(write_end, mp4.read_bytes()), daemon=True)
    writer.start()
    out = tmp_path / "p.csv"
    with open(read_end, "rb") as pipe:
        pipe.raw.name = "<stdin>"  # as sys.stdin.buffer names itself
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(pipe))
        assert main(["predict", str(ckpt), "-", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "<stdin>" in err and "a pipe can carry MPEG-TS" in err
    assert not out.exists()
    writer.join(10)
    assert not writer.is_alive()


def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to the pipe ``fd`` and close it (stops quietly when the reader has gone)."""
    with contextlib.suppress(BrokenPipeError), open(fd, "wb") as pipe:
        pipe.write(data)


@needs_pyav
@pytest.mark.slow
def test_predict_reads_mpegts_piped_to_stdin(ckpt, ts_segment, tmp_path):
    out = tmp_path / "piped.csv"
    done = subprocess.run([sys.executable, "-c", CLI, "predict", str(ckpt), "-", "--out", str(out), "--batch-size",
                           "8", "--no-progress", "--json"], input=ts_segment.read_bytes() * 2, capture_output=True,
                          timeout=CHILD_SECONDS, cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["results"][0]["source"] == "-" and report["damaged_packets"] >= 1
    assert report["stages"]["measured"] == "in the run" and "profile_skipped" not in report  # nothing decoded twice
    assert [int(r["frame"]) for r in read_csv(out)] == list(range(180))


@needs_pyav
@pytest.mark.slow
def test_sigterm_while_a_fifo_has_no_data_stops_at_once(ckpt, tmp_path):
    fifo, out = tmp_path / "camera.ts", tmp_path / "camera.csv"
    os.mkfifo(fifo)
    child = subprocess.Popen([sys.executable, "-c", CLI, "predict", str(ckpt), str(fifo), "--out", str(out),
                              "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    fd = None
    try:
        fd = open_writer(fifo, time.monotonic() + CHILD_SECONDS)  # the decoder has opened the FIFO ...
        assert fd is not None and child.poll() is None
        time.sleep(0.3)  # ... and waits for bytes that never come
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=STOP_SECONDS)
        assert child.returncode == 128 + signal.SIGTERM
        assert err.decode().strip().startswith("foldedcnns: interrupted by SIGTERM") and len(err.splitlines()) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.ts"]  # no CSV, no temporary file
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if fd is not None:
            os.close(fd)
