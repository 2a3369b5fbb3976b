"""Errors a user can cause are one line and exit 1; real bugs get a private, bounded crash report.

Covers the defects of the fault campaign: the crash log written through a fixed /tmp path (a planted
link redirected it, a folder there crashed the handler), exit code 3 for ordinary faults (`peak
--threads 0`, a non-UTF-8 or absurdly wide description, resource errors), and the checkpoint
refusal message that quoted torch's advice to turn the safety check off.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from foldedcnns.cli import analysis, crash
from foldedcnns.cli.main import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(err: str, prefix: str = "foldedcnns: error: ") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix) and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def state(tmp_path, monkeypatch) -> Path:
    """A private XDG_STATE_HOME (and TMPDIR) for the crash reports of one test."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path / "state" / crash.APP_DIR


@pytest.fixture
def bug(monkeypatch):
    """Make ``foldedcnns flops`` fail with ``exc`` (a stand-in for a bug anywhere in a command)."""

    def install(exc: BaseException) -> None:
        def broken(args: object) -> int:
            raise exc

        monkeypatch.setattr(analysis, "run_flops", broken)

    return install


# -- crash reports ---------------------------------------------------------------------------------


def test_a_bug_gets_one_line_and_a_private_report(capsys, state, bug):
    bug(RuntimeError("boom\nsecond line"))
    code, err = run_cli(capsys, "flops", "lol/goldnumber-fraction")
    assert code == 3
    line = one_line(err, "foldedcnns: unexpected error: RuntimeError: boom (a bug; crash report in ")
    report = Path(line.split("crash report in ", 1)[1].rstrip(")"))
    assert report.parent == state and report.is_file()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and stat.S_IMODE(report.stat().st_mode) == 0o600
    text = report.read_text()
    assert "RuntimeError: boom" in text and "Traceback" in text


def test_a_link_planted_at_the_old_fixed_path_is_never_followed(capsys, state, bug, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's file\n")
    os.symlink(victim, tmp_path / "tmp" / "foldedcnns-crash.log")  # the fixed name the handler used to append to
    bug(RuntimeError("boom"))
    assert run_cli(capsys, "flops", "lol/goldnumber-fraction")[0] == 3
    assert victim.read_text() == "the victim's file\n"


def test_a_link_in_place_of_the_report_folder_is_not_followed(capsys, state, bug, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state.parent.mkdir(parents=True)
    os.symlink(elsewhere, state)
    bug(RuntimeError("boom"))
    code, err = run_cli(capsys, "flops", "lol/goldnumber-fraction")
    assert code == 3
    assert "no crash report written" in one_line(err, "foldedcnns: unexpected error: ")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("blocker", ["file", "folder of another mode"])
def test_a_broken_report_location_never_crashes_the_handler(capsys, state, bug, tmp_path, blocker):
    state.parent.mkdir(parents=True)
    if blocker == "file":
        state.write_text("not a folder")
    else:
        state.mkdir(mode=0o777)
        state.chmod(0o777)  # writable by others: refused, not written into
    (tmp_path / "tmp" / "foldedcnns-crash.log").mkdir()  # the old handler crashed on a folder here
    bug(RuntimeError("boom"))
    code, err = run_cli(capsys, "flops", "lol/goldnumber-fraction")
    assert code == 3
    assert "no crash report written" in one_line(err, "foldedcnns: unexpected error: ")


def test_reports_are_bounded_in_size_and_number(capsys, state, bug):
    bug(RuntimeError("x" * (4 * crash.MAX_REPORT_BYTES)))
    for _ in range(crash.MAX_REPORTS + 3):
        assert run_cli(capsys, "flops", "lol/goldnumber-fraction")[0] == 3
    reports = sorted(state.iterdir())
    assert len(reports) == crash.MAX_REPORTS
    assert max(r.stat().st_size for r in reports) <= crash.MAX_REPORT_BYTES + 100


# -- ordinary faults are exit 1, not "unexpected error" ------------------------------------------------


@pytest.mark.parametrize("threads", ["0", "-1", "1000000000"])
def test_peak_with_a_bad_thread_count_is_a_one_line_error(capsys, threads):
    code, err = run_cli(capsys, "peak", "--threads", threads, "--seconds", "0.001")
    assert code == 1
    assert "--threads must be an integer from 1 to" in one_line(err) and threads in err


@pytest.mark.parametrize(("exc", "fragment"), [
    (MemoryError(), "out of memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried "
                  "to allocate 300000000000 bytes."), "out of memory: [enforce fail"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such/file"),
     "cannot use /no/such/file: no such file or folder"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/some/folder"), "cannot use /some/folder: it is a folder"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
    ("not utf-8", "not valid UTF-8"),
])
def test_resource_file_system_and_decoding_errors_are_exit_1(capsys, state, bug, exc, fragment):
    if exc == "not utf-8":
        exc = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    bug(exc)
    code, err = run_cli(capsys, "flops", "lol/goldnumber-fraction")
    assert code == 1
    assert fragment in one_line(err)
    assert not state.exists()  # no crash report: not a bug


def test_non_utf8_description_is_a_one_line_error(capsys, tmp_path, tiny_task):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(tiny_task.to_dict()).replace('"a"', '"\u00e9"').encode("latin-1"))
    code, err = run_cli(capsys, "flops", "--description", path)
    assert code == 1
    assert "latin1.json" in one_line(err)


@pytest.mark.slow
def test_a_width_of_1e9_in_a_description_is_a_one_line_error(tmp_path, tiny_task):
    """Run under a 16 GB address-space limit: without a bound checked before allocation this is a 300 GB
    allocation attempt; either way the answer must be one line and exit 1."""
    desc = tiny_task.to_dict()
    desc["model-architecture"] = {**desc["model-architecture"], "conv1_n_feature_maps": 10**9}
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(desc))
    script = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (16 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        from foldedcnns.cli.main import main
        sys.exit(main(sys.argv[1:]))
    """)
    if resource.getrlimit(resource.RLIMIT_AS)[1] not in (resource.RLIM_INFINITY,) and \
            resource.getrlimit(resource.RLIMIT_AS)[1] < 16 * 2**30:
        pytest.skip("the hard address-space limit is below 16 GB")
    for argv in (["flops", "--description", str(path)], ["intensity", "--description", str(path), "--folds", "1"]):
        done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})
        assert done.returncode == 1, done.stderr
        assert re.search(r"1,?000,?000,?000", one_line(done.stderr))


def test_a_labels_csv_that_is_not_utf8_names_the_file(capsys, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes(b"frame,object_name\n0,person\n1,caf\xe9\n")
    (tmp_path / "frames").mkdir()
    code, err = run_cli(capsys, "data", "noscope-split", "custom", tmp_path / "out", "--object", "person",
                        "--labels", labels, "--frames", tmp_path / "frames")
    assert code == 1
    assert "labels.csv" in one_line(err) and "not a readable CSV" in err
    assert not (tmp_path / "out").exists()


def test_a_frame_number_that_would_allocate_terabytes_is_refused(capsys, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("frame,object_name\n0,person\n1e15,person\n")
    (tmp_path / "frames").mkdir()
    code, err = run_cli(capsys, "data", "noscope-split", "custom", tmp_path / "out", "--object", "person",
                        "--labels", labels, "--frames", tmp_path / "frames")
    assert code == 1
    assert "labels.csv:3: bad row" in one_line(err)


# -- untrusted checkpoints ------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "bench"])
def test_a_checkpoint_that_may_run_code_is_refused_without_advice_to_turn_the_check_off(
        capsys, tmp_path, monkeypatch, image_files, command):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "foldedcnns-checkpoint", "payload": RunsCode()}, evil)
    image_files(tmp_path / "imgs", ["a.png"])
    argv = {"predict": ["predict", evil, tmp_path / "imgs", "--out", tmp_path / "p.csv", "--no-progress"],
            "evaluate": ["evaluate", evil, "--data", tmp_path / "imgs"],
            "export": ["export", evil, "--out", tmp_path / "m.onnx"],
            "bench": ["bench", "--tasks", evil, "--out", tmp_path / "b.csv"]}[command]
    code, err = run_cli(capsys, *argv)
    assert code == 1
    line = one_line(err)
    assert "contains objects that are not plain tensors and data; it was not loaded (it may run code)" in line
    assert "weights_only" not in line and "torch.load" not in line
    assert not (tmp_path / "pwned").exists()
