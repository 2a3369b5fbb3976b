"""NoScope preparation: labels from CSV, contiguous splits, frame files, streaming, and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from foldedcnns.cli.main import main
from foldedcnns.data.folder import ImageFolder
from foldedcnns.data.imageio import read_image
from foldedcnns.data.noscope import (
    NoScopeVideoDataset,
    SplitParams,
    extract_frames,
    label_frames,
    load_video_split,
    load_video_splits,
    split_frames,
    split_params,
)
from foldedcnns.errors import ConfigError, DataError

FRAMES, STEP = 30, 8  # the conftest's tiny_video: 30 frames of 48 x 64, frame i is grey 8 * i
PERSON_FRAMES = {1, 2, 7, 9, 10, 13, 20}
CSV_LAST_FRAME = 23  # labels cover frames 0..23: chunks of 1/8 are 3 frames


def write_csv(path: Path, last_frame: int = CSV_LAST_FRAME) -> Path:
    rows = ["frame,object_name,confidence,xmin,ymin,xmax,ymax"]
    for frame in range(last_frame + 1):
        if frame in PERSON_FRAMES:
            rows.append(f"{frame},person,0.9,1,2,3,4")
        if frame % 3 == 0:
            rows.append(f"{frame},car,0.8,1,2,3,4")
    rows.append(f"{last_frame},car,0.5,0,0,1,1")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def video(tiny_video: Callable[..., Path]) -> Path:
    """The tiny video without its red block, so a frame's mean grey gives its index."""
    return tiny_video(count=FRAMES, marker=False)


def grey_index(image: np.ndarray) -> int:
    return round(float(image.mean()) / STEP)


def test_label_frames(tmp_path: Path) -> None:
    labels = label_frames(write_csv(tmp_path / "l.csv"), "person")
    assert labels.dtype == np.uint8 and len(labels) == CSV_LAST_FRAME + 1
    assert set(np.flatnonzero(labels).tolist()) == PERSON_FRAMES
    assert len(label_frames(tmp_path / "l.csv", "car", num_frames=40)) == 40


def test_label_frames_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        label_frames(tmp_path / "missing.csv", "person")
    (tmp_path / "bad.csv").write_text("frame_id,label\n1,person\n")
    with pytest.raises(DataError, match="lacks 'frame' and 'object_name'"):
        label_frames(tmp_path / "bad.csv", "person")
    (tmp_path / "row.csv").write_text("frame,object_name\n1,person\nabc,car\n")
    with pytest.raises(DataError, match=r"row\.csv:3: bad row"):
        label_frames(tmp_path / "row.csv", "person")
    with pytest.raises(DataError, match="never lists object 'bus'; it has: car, person"):
        label_frames(write_csv(tmp_path / "l.csv"), "bus")
    (tmp_path / "empty.csv").write_text("frame,object_name\n")
    with pytest.raises(DataError, match="has no rows"):
        label_frames(tmp_path / "empty.csv", "person")


@pytest.mark.parametrize(("config", "expected"), [
    ("coral", SplitParams("person", (1, 8), 5)),
    ("night", SplitParams("car", (1, 8), 1)),
    ("noscope/roundabout", SplitParams("car", (1, 8), 1)),
    ("taipei", SplitParams("bus", (1, 16), 0)),
])
def test_shipped_split_configs(config: str, expected: SplitParams) -> None:
    assert split_params(config) == expected


def test_split_ranges_match_the_original() -> None:
    coral = split_params("coral").ranges(800)  # chunks 5, 6, 7 of 8: the last three eighths
    assert coral == {"train": range(500, 600), "val": range(600, 700), "test": range(700, 800)}
    taipei = split_params("taipei").ranges(1605)  # int(1605 / 16) = 100 frames per chunk
    assert taipei == {"train": range(0, 100), "val": range(100, 200), "test": range(200, 300)}


def test_custom_split_params() -> None:
    assert split_params("custom", object_name="bike") == SplitParams("bike", (1, 8), 0)
    assert split_params(None, object_name="bike", fraction="1/10", start_split=7) == SplitParams("bike", (1, 10), 7)
    assert split_params("coral", object_name="dog").object_name == "dog"
    assert split_params({"object": "cat", "fraction": [1, 4], "start_split": 1}) == SplitParams("cat", (1, 4), 1)
    with pytest.raises(ConfigError, match="needs the object"):
        split_params("custom")
    with pytest.raises(ConfigError, match="start split 6 leaves no room"):
        split_params("coral", start_split=6)
    with pytest.raises(ConfigError, match="fraction must look like 1/8"):
        split_params("coral", fraction="one eighth")
    with pytest.raises(ConfigError, match="no 'noscope' split settings"):
        split_params("lol/goldnumber-fraction")


def test_extract_frames_true_indices(video: Path, tmp_path: Path) -> None:
    out = tmp_path / "frames"
    assert extract_frames(video, out, start=20, progress=False) == FRAMES - 20
    names = sorted(int(p.stem) for p in out.glob("*.png"))
    assert names == list(range(20, FRAMES))
    frame = read_image(out / "25.png")
    assert frame.shape == (50, 50, 3) and grey_index(frame) == 25
    with pytest.raises(DataError, match="already exists"):
        extract_frames(video, out, progress=False)


def test_extract_frames_leaves_nothing_on_a_bad_video(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match="cannot open video"):
        extract_frames(bad, tmp_path / "frames", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]


def test_split_frames_layout_and_stats(video: Path, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    extract_frames(video, frames, progress=False)
    csv = write_csv(tmp_path / "labels.csv")
    params = split_params("custom", object_name="person", start_split=2)  # chunks of 3 frames: 6..14
    stats = split_frames(csv, frames, tmp_path / "split", params, progress=False)
    assert stats["train"] == {"first_frame": 6, "last_frame": 8, "frames": 3, "positive": 1,
                              "positive_fraction": 1 / 3}
    layout = sorted(str(p.relative_to(tmp_path / "split")) for p in (tmp_path / "split").rglob("*.png"))
    assert layout == ["test/0/12.png", "test/0/14.png", "test/1/13.png", "train/0/6.png", "train/0/8.png",
                      "train/1/7.png", "val/0/11.png", "val/1/10.png", "val/1/9.png"]
    assert (tmp_path / "split" / "noscope_split.json").is_file()
    data = ImageFolder(tmp_path / "split" / "val", classes=["no_person", "person"])
    assert data.targets == [0, 1, 1]


def test_split_frames_missing_frames(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    csv = write_csv(tmp_path / "labels.csv")
    with pytest.raises(DataError, match=r"lacks 9 of the 9 frames .*first missing: 0\.png"):
        split_frames(csv, frames, tmp_path / "split", split_params("custom", object_name="person"), progress=False)
    assert not (tmp_path / "split").exists()


def test_streaming_matches_the_files(video: Path, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "labels.csv")
    params = split_params("custom", object_name="person", start_split=2)
    x, y = load_video_split(video, csv, params, "val")
    assert x.shape == (3, 3, 50, 50) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.tolist() == [1, 1, 0]  # frames 9, 10, 11
    assert [grey_index(f.numpy()) for f in x] == [9, 10, 11]
    extract_frames(video, tmp_path / "frames", progress=False)
    split_frames(csv, tmp_path / "frames", tmp_path / "split", params, progress=False)
    folder = ImageFolder(tmp_path / "split" / "val")
    files, labels = folder.tensors()
    by_frame = {int(Path(path).stem): i for i, (path, _) in enumerate(folder.samples)}
    for k, frame in enumerate([9, 10, 11]):  # PNG files and streamed tensors hold the same pixels
        assert torch.equal(files[by_frame[frame]], x[k]) and labels[by_frame[frame]] == y[k]
    streamed = list(NoScopeVideoDataset(video, csv, params, "test"))
    x_test, y_test = load_video_split(video, csv, params, "test")
    assert torch.equal(torch.stack([s[0] for s in streamed]), x_test)
    assert [s[1] for s in streamed] == y_test.tolist()


def test_load_video_splits_cache(video: Path, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "labels.csv")
    first = load_video_splits(video, csv, {"object": "person", "fraction": [1, 8], "start_split": 0},
                              cache_dir=tmp_path / "cache")
    assert sorted(first) == ["test", "train", "val"] and len(list((tmp_path / "cache").glob("*.npz"))) == 3
    again = load_video_splits(video, csv, SplitParams("person", (1, 8), 0), cache_dir=tmp_path / "cache")
    assert all(torch.equal(first[s][0], again[s][0]) and torch.equal(first[s][1], again[s][1]) for s in first)


def test_video_shorter_than_csv(video: Path, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "labels.csv", last_frame=79)  # chunks of 10 frames: train 10..19, test 30..39
    params = split_params("custom", object_name="person", start_split=1)
    with pytest.raises(DataError, match=r"ended at frame 29 .*up to 39.*CSV for this video"):
        load_video_splits(video, csv, params, ("train", "test"))
    with pytest.raises(DataError, match=r"has only 30 frames, none at or after the first frame asked for \(30\)"):
        load_video_split(video, csv, params, "test")


def test_cli_frames_and_split(video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = tmp_path / "frames"
    assert main(["data", "noscope-frames", str(video), str(frames), "--size", "20", "--no-progress"]) == 0
    assert "wrote 30 frames (0..29)" in capsys.readouterr().out
    csv = write_csv(tmp_path / "labels.csv")
    args = ["data", "noscope-split", "custom", str(tmp_path / "split"), "--labels", str(csv), "--frames",
            str(frames), "--object", "person", "--start-split", "1", "--print-stats", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "positive fraction" in out and "train" in out
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "noscope-frames", str(tmp_path / "none.mp4"), str(tmp_path / "f2"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("foldedcnns: error:") and "none.mp4 does not exist" in err and "\n" not in err
