"""Slot warm-up: block-diagonal, tied slots while separate; cross-slot weights phased in after."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foldedcnns.core.folding import fold, unfold_logits
from foldedcnns.errors import ConfigError
from foldedcnns.models.registry import build_model
from foldedcnns.training.slots import SlotWarmup, feature_groups, slot_groups, tie_index

TASK = "lol/goldnumber-fraction"


def _step(model, warmup, images, labels, f, epoch=0, progress=1.0, lr=1e-2):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss = F.cross_entropy(unfold_logits(model(fold(images, f)), f), labels)
    optimizer.zero_grad()
    loss.backward()
    with warmup.blend(epoch, progress):
        optimizer.step()


def _slot_logits(model, images, f):
    return unfold_logits(model(fold(images, f)), f)


def test_groups_and_tie_index():
    assert slot_groups(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert slot_groups(5, 2).tolist() == [0, 0, 0, 1, 1]
    # A flatten of 4 channels x 3 positions: inputs follow the slot of their channel.
    assert feature_groups(12, 2, channels=4).tolist() == [0] * 6 + [1] * 6
    assert tie_index(slot_groups(5, 2), 2).tolist() == [[0, 1], [3, 4]]
    assert tie_index(feature_groups(12, 2, channels=4), 2, unit=3).tolist() == [[0, 1, 2, 3, 4, 5],
                                                                                 [6, 7, 8, 9, 10, 11]]


@pytest.mark.slow
@pytest.mark.parametrize(("f", "multiplier"), [(2, 1.5), (4, None)])  # widths divisible by f
def test_separate_slots_are_tied_copies_and_stay_so(f, multiplier):
    torch.manual_seed(0)
    model = build_model(TASK, fold=f, multiplier=multiplier)
    warmup = SlotWarmup(model, f, epochs=2)
    warmup.separate()
    warmup.begin_epoch(0)
    images = torch.randn(4 * f, 3, 22, 52)
    labels = torch.randint(0, 11, (4 * f,))
    # Each image's logits depend on that image only and not on its slot: moving the images to other
    # slots (a rotation within every group) moves their logits with them, before and after training.
    rotated = images.view(4, f, 3, 22, 52).roll(1, dims=1).reshape_as(images)
    for _ in range(2):
        out = _slot_logits(model, images, f).view(4, f, -1)
        out_rot = _slot_logits(model, rotated, f).view(4, f, -1)
        torch.testing.assert_close(out_rot, out.roll(1, dims=1), rtol=1e-4, atol=1e-5)
        _step(model, warmup, images, labels, f)
    weight = model.classifier.weight
    assert weight.abs().sum() > 0
    k = 11
    blocks = [weight[i * k:(i + 1) * k, i * weight.shape[1] // f:(i + 1) * weight.shape[1] // f] for i in range(f)]
    for block in blocks[1:]:
        torch.testing.assert_close(block, blocks[0])
    off = weight[:k, weight.shape[1] // f:]
    assert off.abs().max() == 0


@pytest.mark.slow
def test_blend_phases_cross_slot_weights_in():
    torch.manual_seed(0)
    f = 2
    model = build_model(TASK, fold=f, multiplier=1.5)  # 48 channels: slots of 24
    warmup = SlotWarmup(model, f, epochs=1)
    warmup.separate()
    images, labels = torch.randn(8, 3, 22, 52), torch.randint(0, 11, (8,))
    warmup.begin_epoch(0)
    _step(model, warmup, images, labels, f, epoch=0)
    conv = model.features[3].weight
    assert conv[: conv.shape[0] // 2, conv.shape[1] // 2:].abs().max() == 0
    assert warmup.alpha(1, 0.5) == pytest.approx(0.5)
    warmup.begin_epoch(1)
    assert not warmup.handles
    _step(model, warmup, images, labels, f, epoch=1, progress=0.5)
    assert conv[: conv.shape[0] // 2, conv.shape[1] // 2:].abs().max() > 0
    assert warmup.alpha(2, 0.0) == 1.0


def test_uneven_widths_tie_the_common_part():
    torch.manual_seed(0)
    f = 3  # 55-channel hidden layers: slots of 19, 18 and 18 channels (0-18, 19-36, 37-54)
    model = build_model(TASK, fold=f)
    warmup = SlotWarmup(model, f, epochs=1)
    warmup.separate()
    warmup.begin_epoch(0)
    _step(model, warmup, torch.randn(6, 3, 22, 52), torch.randint(0, 11, (6,)), f)
    conv = model.features[3].weight  # (55, 55, 3, 3)
    assert tie_index(slot_groups(55, 3), 3)[:, 0].tolist() == [0, 19, 37]
    torch.testing.assert_close(conv[:18, :18], conv[19:37, 19:37])
    torch.testing.assert_close(conv[:18, :18], conv[37:55, 37:55])
    assert conv[:19, 19:].abs().max() == 0
    assert not torch.equal(conv[18, :18], conv[36, 19:37])  # the extra channel of slot 0 trains on its own


def test_off_and_unsupported_models():
    model = build_model(TASK, fold=1)
    assert not SlotWarmup(model, 1, epochs=5).active
    assert not SlotWarmup(build_model(TASK, fold=2), 2, epochs=0).active
    with pytest.raises(ConfigError, match="slot-warmup 0"):
        SlotWarmup(build_model(TASK, fold=4, multiplier=0.05), 4, epochs=1)
