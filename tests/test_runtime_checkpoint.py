"""Atomic writes and self-describing checkpoints."""


import pytest
import torch

from foldedcnns.errors import DataError
from foldedcnns.models import build_model
from foldedcnns.runtime.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from foldedcnns.utils.atomic import atomic_open, atomic_write_text


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_checkpoint_round_trip_is_self_describing(tmp_path):
    model = build_model("apex/squad_count_v2", fold=3)
    path = save_checkpoint(tmp_path / "best.pt", make_checkpoint(model, epoch=4, metrics={"val_top1": 0.5}))
    loaded, config = model_from_checkpoint(path)
    assert config.fold == 3 and config.task.class_names == model.config.task.class_names
    assert config.input_shape == (9, 19, 25) and load_checkpoint(path)["epoch"] == 4
    x = torch.rand(2, 9, 19, 25)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"cannot read checkpoint .*not a plain torch.save file") as info:
        load_checkpoint(tmp_path / "junk.pt")
    assert "weights_only" not in str(info.value)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(DataError, match="not a foldedcnns checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "foldedcnns-checkpoint", "x": Evil()}, path)
    with pytest.raises(DataError, match=r"contains objects that are not plain tensors and data; it was not loaded "
                                        r"\(it may run code\)") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value)
