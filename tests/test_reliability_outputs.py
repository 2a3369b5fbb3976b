"""The output policy of every command that writes: nothing lost, nothing half-written, one-line errors.

* an existing output is refused unless --overwrite;
* a failure never touches an existing file (temporary file beside it, renamed on success);
* rows decoded before a fault go to NAME.partial, never over NAME;
* file-system errors (permission, a folder or file in the way, a full disk, a read-only file
  system) are one line naming the path, exit 1.
"""

from __future__ import annotations

import csv
import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from foldedcnns.cli.main import main
from foldedcnns.errors import DataError
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint
from foldedcnns.utils import atomic

USER_DATA = "frame,label\n0,my precious data\n"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(err: str, *fragments: str) -> str:
    """The one stderr line, checked to be a ``foldedcnns: error:`` line holding every fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("foldedcnns: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*") if p.name.endswith((".tmp", ".partial")))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def ckpt(tiny_checkpoint) -> Path:
    return tiny_checkpoint(2)


@pytest.fixture
def images(tmp_path, image_files, tiny_task) -> Path:
    """Ten readable images at the tiny task's size in tmp_path/imgs."""
    image_files(tmp_path / "imgs", [f"{i:03d}.png" for i in range(10)], size=(tiny_task.height, tiny_task.width))
    return tmp_path / "imgs"


# -- the data-loss defect: predict over an existing --out -------------------------------------------


def test_predict_refuses_an_existing_out_and_never_replaces_it_by_a_failure(tmp_path, capsys, ckpt):
    keep = tmp_path / "keep.csv"
    keep.write_text(USER_DATA)
    (tmp_path / "not-a-video.mp4").write_bytes(b"junk, not a video")
    code, err = run_cli(capsys, "predict", ckpt, tmp_path / "not-a-video.mp4", "--out", keep, "--no-progress")
    assert code == 1
    error_line(err, "keep.csv already exists", "--overwrite")
    assert keep.read_text() == USER_DATA
    # --overwrite allows replacing it, but only by a complete result: this run fails, so the file stays
    code, err = run_cli(capsys, "predict", ckpt, tmp_path / "not-a-video.mp4", "--out", keep, "--no-progress",
                        "--overwrite")
    assert code == 1
    error_line(err, "not-a-video.mp4", "no CSV written")
    assert keep.read_text() == USER_DATA
    assert not (tmp_path / "keep.csv.partial").exists() and not temporaries(tmp_path)


def test_rows_decoded_before_a_fault_go_to_a_partial_file_of_their_own(tmp_path, capsys, ckpt, images):
    (images / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "preds.csv"
    out.write_text(USER_DATA)
    code, err = run_cli(capsys, "predict", ckpt, images, "--out", out, "--batch-size", "4", "--no-progress",
                        "--overwrite")
    assert code == 1
    error_line(err, "005.png", "kept the 5 rows decoded before it in", "preds.csv.partial")
    assert out.read_text() == USER_DATA
    assert [Path(r["path"]).name for r in read_rows(tmp_path / "preds.csv.partial")] == \
        [f"{i:03d}.png" for i in range(5)]
    # a .partial left by an earlier run is an existing output too
    out.unlink()
    code, err = run_cli(capsys, "predict", ckpt, images, "--out", out, "--no-progress")
    assert code == 1
    error_line(err, "preds.csv.partial already exists")
    assert not out.exists() and not temporaries(tmp_path)


def test_overwrite_replaces_only_with_a_complete_file(tmp_path, capsys, ckpt, images):
    out = tmp_path / "preds.csv"
    out.write_text(USER_DATA)
    code, _ = run_cli(capsys, "predict", ckpt, images, "--out", out, "--no-progress", "--overwrite",
                      "--profile-frames", "0")
    assert code == 0
    assert len(read_rows(out)) == 10 and not temporaries(tmp_path)


# -- every writing command refuses an existing output --------------------------------------------------


def _existing(tmp_path: Path, name: str, folder: bool = False) -> Path:
    path = tmp_path / name
    if folder:
        path.mkdir()
        (path / "mine.txt").write_text("keep me")
    else:
        path.write_text("keep me")
    return path


COMMANDS = {
    "bench": lambda p, c, t: ["bench", "--tasks", c, "--out", _existing(p, "b.csv")],
    "bench --plot": lambda p, c, t: ["bench", "--tasks", c, "--out", p / "new.csv", "--plot", _existing(p, "b.png")],
    "tune": lambda p, c, t: ["tune", c, "--out", _existing(p, "t.csv")],
    "export": lambda p, c, t: ["export", c, "--out", _existing(p, "m.onnx")],
    "intensity --plot": lambda p, c, t: ["intensity", "--plot", _existing(p, "ai.png")],
    "data sheet": lambda p, c, t: ["data", "sheet", t, _existing(p, "sheet.png")],
    "data synth --sheet": lambda p, c, t: ["data", "synth", t, p / "new", "--sheet", _existing(p, "s.png")],
    "data synth": lambda p, c, t: ["data", "synth", t, _existing(p, "synth", folder=True)],
    "data noscope-frames": lambda p, c, t: ["data", "noscope-frames", p / "v.mp4", _existing(p, "fr", folder=True)],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_writing_command_refuses_an_existing_output(tmp_path, capsys, ckpt, tiny_task_file, command):
    argv = COMMANDS[command](tmp_path, ckpt, tiny_task_file)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, err = run_cli(capsys, *argv)
    assert code == 1
    error_line(err, "already exists", "--overwrite")
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing changed, nothing created
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.csv").exists()


def test_work_folders_of_train_and_sweep_refuse_other_files(tmp_path, capsys, tiny_task, tiny_task_file,
                                                            image_folder):
    data = image_folder(tiny_task, {"train": 2, "val": 1, "test": 1})
    foreign = _existing(tmp_path, "mine", folder=True)
    common = ["--data", data, "--epochs", "1", "--device", "cpu", "--no-progress", "--out", foreign]
    code, err = run_cli(capsys, "train", "--description", tiny_task_file, *common)
    assert code == 1
    error_line(err, "holds other files")
    code, err = run_cli(capsys, "sweep", "--tasks", tiny_task_file, "--folds", "1", *common)
    assert code == 1
    error_line(err, "holds other files")
    assert sorted(p.name for p in foreign.iterdir()) == ["mine.txt"]


# -- file-system errors: one line naming the path, exit 1, the old file untouched ---------------------


def test_a_folder_or_a_file_in_the_way_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    code, err = run_cli(capsys, "intensity", "lol/goldnumber-fraction", "--plot", tmp_path / "adir")
    assert code == 1
    error_line(err, "adir is a folder")
    (tmp_path / "afile").write_text("x")
    code, err = run_cli(capsys, "intensity", "lol/goldnumber-fraction", "--plot", tmp_path / "afile" / "ai.png")
    assert code == 1
    error_line(err, "afile is not a folder")
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize(("code_", "reason"), [(errno.ENOSPC, "no space left on the device"),
                                                (errno.EROFS, "read-only file system"),
                                                (errno.EDQUOT, "disk quota exceeded")])
def test_a_failed_write_is_one_line_and_leaves_the_old_file(tmp_path, capsys, monkeypatch, ckpt, images, code_,
                                                            reason):
    out = tmp_path / "preds.csv"
    out.write_text(USER_DATA)

    def full(fd: int) -> None:  # a full disk (or a read-only remount) shows at fsync/close, naming no file
        raise OSError(code_, os.strerror(code_))

    monkeypatch.setattr(atomic.os, "fsync", full)
    code, err = run_cli(capsys, "predict", ckpt, images, "--out", out, "--no-progress", "--overwrite")
    assert code == 1
    error_line(err, f"cannot write {out}", reason)
    assert out.read_text() == USER_DATA and not temporaries(tmp_path)


def test_permission_denied_is_one_line(tmp_path, capsys, monkeypatch, ckpt, images):
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "locked" / ".p.csv.x.tmp"))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    code, err = run_cli(capsys, "predict", ckpt, images, "--out", tmp_path / "locked" / "p.csv", "--no-progress")
    assert code == 1
    error_line(err, "locked/p.csv", "permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_real_read_only_folder_is_one_line(tmp_path, capsys, ckpt, images):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, err = run_cli(capsys, "predict", ckpt, images, "--out", locked / "p.csv", "--no-progress")
    finally:
        locked.chmod(0o700)
    assert code == 1
    error_line(err, "p.csv", "permission denied")


def test_a_failed_checkpoint_write_is_a_data_error_and_keeps_the_old_file(tmp_path, monkeypatch, tiny_task):
    from foldedcnns.models import build_model

    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous epoch")

    def full_disk(obj: object, f: object) -> None:  # how torch.save's C++ writer reports a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DataError, match=r"cannot write .*last\.pt: the write failed .*disk full"):
        save_checkpoint(path, make_checkpoint(build_model(tiny_task)))
    assert path.read_bytes() == b"the previous epoch" and not temporaries(tmp_path)


@pytest.mark.slow
def test_a_real_file_size_limit_is_one_line(tmp_path):
    """A write that the kernel refuses (RLIMIT_FSIZE: EFBIG, as a full disk would refuse it) in a real process."""
    script = textwrap.dedent("""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
        from foldedcnns.cli.main import main
        sys.exit(main(sys.argv[1:]))
    """)
    plot = tmp_path / "ai.png"
    argv = ["intensity", "lol/goldnumber-fraction", "--no-compound", "--plot", str(plot)]
    done = subprocess.run([sys.executable, "-c", script, *argv],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "MPLBACKEND": "Agg", "XDG_STATE_HOME": str(tmp_path / "state")})
    assert done.returncode == 1, done.stderr
    error_line(done.stderr, f"cannot write {plot}", "too large")
    assert not plot.exists() and not temporaries(tmp_path)
