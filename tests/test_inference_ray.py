"""Ray Data path: a local 2-CPU job gives exactly the rows of the single-machine path."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foldedcnns.data.video import write_video
from foldedcnns.inference.pipeline import run_predict
from foldedcnns.models import build_model
from foldedcnns.runtime.checkpoint import make_checkpoint, save_checkpoint

ray = pytest.importorskip("ray")


def write_images(folder: Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (22, 52, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


@pytest.mark.slow
def test_ray_gives_the_same_rows_as_one_machine(tmp_path):
    from foldedcnns.inference.distributed import run_ray_predict

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "f4.pt", make_checkpoint(build_model("lol/goldnumber-fraction", fold=4)))
    write_images(tmp_path / "in" / "a", 37, seed=0)  # 3 shards of 4 batches of 4 (the last one partial)
    write_images(tmp_path / "in" / "b", 14, seed=1)
    (tmp_path / "in" / "b" / "009.png").write_bytes(b"broken")
    rng = np.random.default_rng(2)
    for name, count in (("v1.mp4", 30), ("v2.mp4", 11)):
        write_video(tmp_path / "in" / name, (rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)))
    inputs = [str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b"), str(tmp_path / "in" / "*.mp4")]
    local = run_predict(ckpt, inputs, tmp_path / "local", batch_size=4, profile_frames=0)
    distributed = run_ray_predict(ckpt, inputs, tmp_path / "ray", batch_size=4, num_cpus=2, workers=2)
    assert [r.rows for r in distributed.results] == [r.rows for r in local.results] == [37, 9, 30, 11]
    assert distributed.results[1].error == local.results[1].error and "009.png" in local.results[1].error
    for name in ("a.csv", "b.csv", "v1.csv", "v2.csv"):
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text()
    assert not ray.is_initialized()
