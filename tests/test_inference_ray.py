"""Ray Data path: a local Ray job gives exactly the rows of the single-machine path (one Ray for the module)."""

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import remux_faststart
from foldedcnns.cli.main import main
from foldedcnns.data.frames import FrameSampler
from foldedcnns.data.video import DecodeOptions, iter_views, write_video
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.inference.decoding import DecodePlan, ViewSpec
from foldedcnns.inference.distributed import RayOptions, run_ray_predict
from foldedcnns.inference.distributed_shards import plan_shards, shard_batches
from foldedcnns.inference.pipeline import RunOptions, run_predict
from foldedcnns.inference.predictor import deployment_engine
from foldedcnns.inference.sources import resolve_inputs
from foldedcnns.runtime import Engine

# A local Ray of 4 CPUs: two actors take one (0.5 each); Ray Data then runs two decode tasks at once (with 3
# CPUs its reservations leave the decode tasks one at a time, in one reused process).
RAY_CPUS = 4
# The long clip: keyframes every KEYINT frames, so it is cut into several segments (each >= 64 frames).
LONG_FRAMES, KEYINT = 192, 24


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one costs seconds); jobs that find it running leave it running."""
    ray = pytest.importorskip("ray")  # here, not at import: collecting the fast set need not load Ray (about 1 s)
    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


def moving_frames(count: int) -> list[np.ndarray]:
    """48 x 64 frames with a moving block over noise (real P and B frames)."""
    base = np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        frame = base.copy()
        frame[(2 * i) % 32:(2 * i) % 32 + 16, (3 * i) % 48:(3 * i) % 48 + 16] = (i * 7) % 255
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """An H.264 MP4 (index first, B-frames) of LONG_FRAMES frames with a keyframe every KEYINT frames."""
    pytest.importorskip("av")

    folder = tmp_path_factory.mktemp("long")
    write_video(folder / "plain.mp4", moving_frames(LONG_FRAMES),
                options={"bf": "3", "x264-params": f"keyint={KEYINT}:min-keyint={KEYINT}:scenecut=0"})
    return remux_faststart(folder / "plain.mp4", folder / "long.mp4")


@pytest.mark.slow
def test_ray_gives_the_same_rows_as_one_machine(local_ray, tmp_path, tiny_checkpoint, tiny_digits_task, image_files,
                                                tiny_video):
    ray = local_ray

    ckpt = tiny_checkpoint(4, task=tiny_digits_task)  # 22 x 52 inputs, like the images below
    image_files(tmp_path / "in" / "a", [f"{i:03d}.png" for i in range(37)])  # 3 shards of 4 batches of 4
    image_files(tmp_path / "in" / "b", [f"{i:03d}.png" for i in range(14)], seed=1)
    (tmp_path / "in" / "b" / "009.png").write_bytes(b"broken")
    rng = np.random.default_rng(2)
    for name, count in (("v1.mp4", 30), ("v2.mp4", 11)):
        tiny_video((rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)),
                   path=tmp_path / "in" / name)
    inputs = [str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b"), str(tmp_path / "in" / "*.mp4")]
    local = run_predict(ckpt, inputs, tmp_path / "local", batch_size=4)
    distributed = run_ray_predict(ckpt, inputs, tmp_path / "ray", batch_size=4,
                                  cluster=RayOptions(num_cpus=2, workers=2))
    assert [r.rows for r in distributed.results] == [r.rows for r in local.results] == [37, 9, 30, 11]
    assert distributed.results[1].error == local.results[1].error and "009.png" in local.results[1].error
    # b holds a broken image: its rows go to b.csv.partial on both paths, never to b.csv
    assert [Path(r.output).name for r in distributed.results] == [Path(r.output).name for r in local.results] \
        == ["a.csv", "b.csv.partial", "v1.csv", "v2.csv"]
    for r, ref in zip(distributed.results, local.results, strict=True):
        assert Path(r.output).read_text() == Path(ref.output).read_text()
    assert not (tmp_path / "ray" / "b.csv").exists()
    assert ray.is_initialized()  # the job joined the module's Ray: it leaves it running


@pytest.mark.slow
def test_ray_int8_actors_quantize_with_the_calibration_of_the_driver(local_ray, tmp_path, tiny_checkpoint,
                                                                       tiny_digits_task, image_files, image_folder):
    pytest.importorskip("onnxruntime")

    ckpt = tiny_checkpoint(2, task=tiny_digits_task)
    data = image_folder(tiny_digits_task, {"train": 3})
    image_files(tmp_path / "in" / "a", [f"{i:03d}.png" for i in range(20)])
    inputs = [str(tmp_path / "in" / "a")]
    with pytest.raises(ConfigError, match="--data DIR"):
        run_ray_predict(ckpt, inputs, tmp_path / "none.csv", engine=Engine("onnxruntime", "int8"), batch_size=4)
    engine = deployment_engine(ckpt, Engine("onnxruntime", "int8"), data)
    run_predict(ckpt, inputs, tmp_path / "local.csv", engine=engine, batch_size=4)
    report = run_ray_predict(ckpt, inputs, tmp_path / "ray.csv", engine=engine, batch_size=4,
                             cluster=RayOptions(num_cpus=2, workers=1))
    assert report.results[0].rows == 20
    # the same seeded calibration images in the driver and the actor: the same quantized model, the same rows
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()


@pytest.mark.slow
def test_ray_spreads_one_long_video_over_decode_tasks_with_the_rows_of_one_machine(local_ray, tmp_path, long_clip,
                                                                                  tiny_checkpoint, tiny_digits_task):

    ckpt = tiny_checkpoint(4, task=tiny_digits_task)
    data = long_clip.read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.mp4").write_bytes(data[:len(data) * 2 // 3])  # truncated: a damaged tail
    inputs = [str(long_clip), str(tmp_path / "in" / "cut.mp4")]
    # batch 20 (fold 4): the segments start at keyframes (multiples of 24), so the shards must realign
    local = run_predict(ckpt, inputs, tmp_path / "local", batch_size=20)
    report = run_ray_predict(ckpt, inputs, tmp_path / "ray", batch_size=20, cluster=RayOptions(workers=2))
    assert local.results[0].rows == LONG_FRAMES and local.results[0].error is None
    assert 0 < local.results[1].rows < LONG_FRAMES and "truncated or corrupt" in local.results[1].error
    assert [(r.rows, r.error, Path(r.output).name) for r in report.results] == \
        [(r.rows, r.error, Path(r.output).name) for r in local.results]
    for r, ref in zip(report.results, local.results, strict=True):
        assert Path(r.output).read_bytes() == Path(ref.output).read_bytes()
    videos = report.extra["ray"]["videos"]
    # one video, several shards, decoded by more than one process (two decode tasks at once)
    assert videos[str(long_clip)]["shards"] >= 2 and videos[str(long_clip)]["decode_processes"] >= 2
    assert videos[str(tmp_path / "in" / "cut.mp4")]["shards"] >= 2


@pytest.mark.slow
def test_ray_scrape_gives_the_csv_of_the_local_scrape(local_ray, tmp_path, long_clip, tiny_checkpoint,
                                                       tiny_digits_task, capsys):

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tasks": [
        {"name": "gold", "checkpoint": str(tiny_checkpoint(4, task=tiny_digits_task)), "crop": "0,0,52,22",
         "batch_size": 20},
        {"name": "timer", "checkpoint": str(tiny_checkpoint(2, task=tiny_digits_task)), "crop": [6, 10, 40, 30],
         "batch_size": 6}]}))
    common = ["scrape", str(spec), str(long_clip), "--no-progress", "--json"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "ray"), "--ray", "--workers", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == LONG_FRAMES and report["ray"]["videos"][str(long_clip)]["shards"] >= 2
    assert [t["name"] for t in report["tasks"]] == ["gold", "timer"]
    text = (tmp_path / "ray" / "long.csv").read_text()
    assert text.splitlines()[0].startswith("frame,gold_label,gold_class,gold_score,timer_label")
    assert text == (tmp_path / "local" / "long.csv").read_text()


def test_video_shards_own_whole_batches_and_decode_the_frames_of_one_decoder(long_clip, tmp_path):
    data = long_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) * 2 // 3])
    view = ViewSpec((22, 52), None)
    for path in (long_clip, cut):
        expected, error = [], None
        try:
            for key, (frame,) in iter_views(path, [FrameSampler(view.size, None)]):
                expected.append((key, frame))
        except DataError as exc:
            error = str(exc)
        shards, indexes = plan_shards(resolve_inputs([str(path)]), 20, 3)
        assert len(shards) >= 2
        assert [s.keep[0] for s in shards] == [0, *(s.keep[1] for s in shards[:-1])] and shards[-1].keep[1] is None
        assert all(s.keep[0] % 20 == 0 and s.segment.first <= s.keep[0] for s in shards)
        assert any(s.segment.first != s.keep[0] for s in shards)  # keyframes every 24 frames: realigned on 20
        assert (shards[-1].segment.stop is None) == (path == cut)  # a damaged end is decoded as one decoder does
        got, fault = [], None
        for batch in itertools.chain.from_iterable(shard_batches(s, indexes[0], [view], 20) for s in shards):
            got += list(zip(batch.keys, batch.views[0], strict=True))  # in order, up to the first fault
            if batch.error is not None:
                fault = str(batch.error)
                break
        assert fault == error
        assert [k for k, _ in got] == [k for k, _ in expected]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, expected, strict=True))


def test_ray_refuses_what_it_cannot_do_before_starting(tmp_path, tiny_checkpoint, tiny_digits_task, image_files):
    image_files(tmp_path / "in", ["a.png"])
    with pytest.raises(ConfigError, match="--ray decodes every frame at full fidelity"):
        run_ray_predict(tiny_checkpoint(4, task=tiny_digits_task), [str(tmp_path / "in")], tmp_path / "o.csv",
                        run=RunOptions(DecodePlan(options=DecodeOptions("ref"))))


def test_ray_options_are_checked_when_made():
    assert RayOptions() == RayOptions(address=None, workers=None, num_cpus=None)
    with pytest.raises(ConfigError, match="--workers must be an integer >= 1, got 0"):
        RayOptions(workers=0)
