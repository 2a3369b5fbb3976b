"""Ray Data path: a local 2-CPU job gives exactly the rows of the single-machine path."""

from pathlib import Path

import numpy as np
import pytest

from foldedcnns.errors import ConfigError
from foldedcnns.inference.pipeline import run_predict
from foldedcnns.runtime import Engine


@pytest.mark.slow
def test_ray_gives_the_same_rows_as_one_machine(tmp_path, tiny_checkpoint, tiny_digits_task, image_files, tiny_video):
    ray = pytest.importorskip("ray")  # here, not at import: collecting the fast set need not load Ray (about 1 s)
    from foldedcnns.inference.distributed import RayOptions, run_ray_predict

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
    assert not ray.is_initialized()


@pytest.mark.slow
def test_ray_int8_actors_quantize_with_the_calibration_of_the_driver(tmp_path, tiny_checkpoint, tiny_digits_task,
                                                                       image_files, image_folder):
    pytest.importorskip("ray")
    pytest.importorskip("onnxruntime")
    from foldedcnns.inference.distributed import RayOptions, run_ray_predict
    from foldedcnns.inference.predictor import deployment_engine

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


def test_ray_options_are_checked_when_made():
    from foldedcnns.inference.distributed import RayOptions

    assert RayOptions() == RayOptions(address=None, workers=None, num_cpus=None)
    with pytest.raises(ConfigError, match="--workers must be an integer >= 1, got 0"):
        RayOptions(workers=0)
