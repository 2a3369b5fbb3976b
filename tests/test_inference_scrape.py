"""One decode for many models (scrape), parallel decoders, the decode-once cache and the fidelity levers,
end to end through the command line on tiny H.264 clips with B-frames."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="PyAV is not installed; pip install 'foldedcnns[video]' to run the video tests")

from conftest import remux_faststart
from foldedcnns.cli.main import main
from foldedcnns.data.video import write_video
from foldedcnns.inference.rows import RowAssembler

WIDTH, HEIGHT, FRAMES = 128, 96, 120


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    out = []
    for i in range(count):
        frame = base.copy()
        x, y = (5 * i) % (WIDTH - 30), (3 * i) % (HEIGHT - 20)
        frame[y:y + 20, x:x + 30] = (37 * i) % 255
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """120 frames, a keyframe every 16, B-frames on: several segments."""
    path = tmp_path_factory.mktemp("scrape") / "game.mp4"
    write_video(path, frames(FRAMES), options={"g": "16", "bf": "2", "preset": "ultrafast", "x264-params": "bframes=2"})
    return path


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tiny_digits_task) -> tuple[Path, Path]:
    """Two checkpoints of the 22 x 52 digits task: f = 4 and f = 1."""
    return tiny_checkpoint(4, task=tiny_digits_task), tiny_checkpoint(1, task=tiny_digits_task, seed=3)


def write_spec(path: Path, tasks: list[dict]) -> Path:
    path.write_text(json.dumps({"tasks": tasks}))
    return path


def predict(checkpoint: Path, video: Path, out: Path, *extra: str) -> list[dict[str, str]]:
    assert main(["predict", str(checkpoint), str(video), "--out", str(out), "--no-progress", "--batch-size", "8",
                 *extra]) == 0
    return read_csv(out)


def test_scrape_columns_equal_each_tasks_own_predict(clip, models, tmp_path, capsys):
    f4, f1 = models
    spec = write_spec(tmp_path / "spec.json", [
        {"name": "gold", "checkpoint": str(f4), "crop": "10,5,52,22", "batch_size": 8},
        {"name": "timer", "checkpoint": str(f4), "crop": [60, 50, 52, 22], "batch_size": 8},
        {"name": "coins", "checkpoint": str(f1), "crop": "0,0,104,44", "batch_size": 8}])
    assert main(["scrape", str(spec), str(clip), "--out", str(tmp_path / "out"), "--no-progress",
                 "--decoders", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decoders"] == 2 and report["frames"] == FRAMES
    rows = read_csv(tmp_path / "out" / "game.csv")
    assert list(rows[0]) == ["frame", "gold_label", "gold_class", "gold_score", "timer_label", "timer_class",
                             "timer_score", "coins_label", "coins_class", "coins_score"]
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES))
    for name, ckpt, crop in (("gold", f4, "10,5,52,22"), ("timer", f4, "60,50,52,22"), ("coins", f1, "0,0,104,44")):
        alone = predict(ckpt, clip, tmp_path / f"{name}.csv", "--crop", crop, "--decoders", "1")
        assert [(r[f"{name}_label"], r[f"{name}_class"], r[f"{name}_score"]) for r in rows] == [
            (r["label"], r["class_name"], r["score"]) for r in alone]


@pytest.mark.parametrize(("task", "message"), [
    ({"name": "gold", "checkpoint": "CKPT", "crop": "1,1,52,22", "colour": "red"}, "task gold: unknown key 'colour'"),
    ({"name": "gold", "checkpoint": "missing.pt"}, "task gold: key 'checkpoint':"),
    ({"name": "gold", "crop": "1,1,52,22"}, "task gold: missing key 'checkpoint'"),
    ({"name": "gold", "checkpoint": "CKPT", "crop": "100,90,52,22"}, "task gold: key 'crop' 100,90,52,22 lies outside"),
    ({"name": "gold", "checkpoint": "CKPT", "crop": "a,b"}, "task gold: key 'crop'"),
    ({"name": "gold", "checkpoint": "CKPT", "backend": "tensorrt9"}, "task gold:"),
])
def test_a_bad_spec_is_one_line_naming_the_task_and_the_key(clip, models, tmp_path, capsys, task, message):
    task = {k: (str(models[0]) if v == "CKPT" else v) for k, v in task.items()}
    spec = write_spec(tmp_path / "spec.json", [task])
    assert main(["scrape", str(spec), str(clip), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("foldedcnns: error:") and message in err, err
    assert not (tmp_path / "out" / "game.csv").exists()


@pytest.mark.parametrize("decoders", ["2", "3"])
def test_predict_rows_are_identical_for_every_number_of_decoders(clip, models, tmp_path, decoders):
    one = predict(models[0], clip, tmp_path / "one.csv", "--crop", "10,5,52,22", "--decoders", "1")
    many = predict(models[0], clip, tmp_path / "many.csv", "--crop", "10,5,52,22", "--decoders", decoders)
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "many.csv").read_bytes() and len(one) == len(many)


def test_a_cut_file_fails_the_same_with_one_or_two_decoders(clip, models, tmp_path, capsys):
    data = remux_faststart(clip, tmp_path / "fs.mp4").read_bytes()  # its index first: a cut file still opens
    outcomes = []
    for decoders in ("1", "2"):
        cut = tmp_path / f"cut{decoders}" / "cut.mp4"
        cut.parent.mkdir()
        cut.write_bytes(data[:len(data) * 2 // 3])
        out = cut.with_suffix(".csv")
        code = main(["predict", str(models[0]), str(cut), "--out", str(out), "--no-progress", "--batch-size", "8",
                     "--crop", "10,5,52,22", "--decoders", decoders])
        err = capsys.readouterr().err.strip().replace(str(cut.parent), "DIR")
        outcomes.append((code, err, (cut.parent / "cut.csv.partial").read_text(), out.exists()))
    assert outcomes[0] == outcomes[1]
    code, err, partial, whole = outcomes[0]
    assert code == 1 and len(err.splitlines()) == 1 and "truncated or corrupt" in err and not whole
    assert 8 < len(partial.splitlines()) - 1 < FRAMES


def test_the_cache_gives_the_same_rows_and_refuses_a_changed_video(clip, models, tmp_path, capsys):
    video = tmp_path / "game.mp4"
    shutil.copy(clip, video)
    cache = tmp_path / "cache"
    assert main(["data", "cache", str(video), str(models[0]), "--crop", "10,5,52,22", "--out", str(cache)]) == 0
    assert (cache / "cache.json").is_file() and (cache / "model.u8").stat().st_size == FRAMES * 22 * 52 * 3
    direct = predict(models[0], video, tmp_path / "direct.csv", "--crop", "10,5,52,22")
    cached = predict(models[0], cache, tmp_path / "cached.csv", "--crop", "10,5,52,22")
    assert cached == direct
    capsys.readouterr()
    assert main(["predict", str(models[0]), str(cache), "--out", str(tmp_path / "other.csv"), "--no-progress",
                 "--crop", "0,0,52,22"]) == 1
    assert "holds no task with crop" in capsys.readouterr().err
    write_video(video, frames(FRAMES, seed=5), options={"g": "16"})  # the video changes under the cache
    assert main(["predict", str(models[0]), str(cache), "--out", str(tmp_path / "stale.csv"), "--no-progress",
                 "--crop", "10,5,52,22"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is stale" in err and not (tmp_path / "stale.csv").exists()


@pytest.mark.parametrize("frames_option", ["ref", "key"])
def test_fidelity_levers_keep_a_row_for_every_frame(clip, models, tmp_path, capsys, frames_option):
    full = predict(models[0], clip, tmp_path / "full.csv", "--crop", "10,5,52,22")
    capsys.readouterr()
    rows = predict(models[0], clip, tmp_path / "lever.csv", "--crop", "10,5,52,22", "--decode-frames", frames_option,
                   "--fast-decode", "--json")
    report = json.loads(capsys.readouterr().out)
    assert [int(r["frame"]) for r in rows] == list(range(FRAMES)) and "decoded" in rows[0]
    decoded = [int(r["frame"]) for r in rows if r["decoded"] == "1"]
    assert 0 < len(decoded) < FRAMES and report["frames_decoded"] == len(decoded)
    assert rows[0]["decoded"] == "1"  # the first keyframe
    agreement = np.mean([a["label"] == b["label"] for a, b in zip(rows, full, strict=True)])
    assert agreement > 0.2


def test_row_assembler_fills_skipped_frames_from_the_nearest_decoded_one():
    rows = RowAssembler(2, frames=9)
    rows.add_keys([1, 4, 6])
    rows.add(0, [10, 40, 60], [0.1, 0.4, 0.6])
    assert rows.ready() == []  # model 1 has not predicted yet
    rows.add(1, [11, 41, 61], [0.5, 0.5, 0.5])
    got = rows.ready() + rows.finish()
    assert [(k, d, p[0][0]) for k, d, p in got] == [(0, False, 10), (1, True, 10), (2, False, 10), (3, False, 40),
                                                    (4, True, 40), (5, False, 40), (6, True, 60), (7, False, 60),
                                                    (8, False, 60)]
    cut = RowAssembler(1, frames=9)
    cut.add_keys([0, 3])
    cut.add(0, [1, 2], [0.5, 0.5])
    assert [k for k, _, _ in cut.finish(complete=False)] == [0, 1, 2, 3]  # no rows made up after a fault
