"""tune's three-stage search, with a stub backend whose speed is known in advance (a fake clock), and its
accuracy cost measured by evaluate's loop."""

import time
import types

import pytest

from foldedcnns.benchmark import timing
from foldedcnns.benchmark.tune import TuneConfig
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import BACKENDS, Backend, Runner
from foldedcnns.runtime.engine import Engine
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.training.evaluation import evaluate
from foldedcnns.workflows.tune import tune

CALL_OVERHEAD = 0.002  # seconds per call: bigger batches are faster per image


class FakeClock:
    now = 0.0

    @classmethod
    def perf_counter(cls):
        return cls.now


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    FakeClock.now = 0.0
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=FakeClock.perf_counter))


class SleepBackend(Backend):
    """A call advances the fake clock by overhead + images * cost; ``fast`` makes fold 2 at bf16 the winner."""

    def __init__(self, name, fast):
        self.name, self.fast = name, fast

    def build(self, model, example, engine, fold):
        per_image = 2e-5 if (self.fast and fold == 2 and engine.precision == "bf16") else 1e-4

        def run(x):
            FakeClock.now += CALL_OVERHEAD + x.shape[0] * fold * per_image
            return x.new_zeros(x.shape[0], 3 * fold)

        return Runner(run, lambda x: x, lambda y: y)


@pytest.fixture()
def tiny(tiny_task_file):
    """The tiny task as tune takes it: the path of its description, a string."""
    return str(tiny_task_file)


def tune_config(tiny, **kw):
    base = dict(target=tiny, folds=(1, 2), backends=("slow", "quick"), precisions=("fp32", "bf16"),
                batch_sizes=(8, 16, 32), screen_seconds=0.005, screen_warmup=0, final_seconds=0.005, final_warmup=0,
                trials=2, peak_seconds=0, threads=1)
    base.update(kw)
    return TuneConfig(**base)


@pytest.fixture(autouse=True)
def sleep_backends(monkeypatch):
    """The two stub backends, registered for each test (the registry is restored afterwards)."""
    for backend in (SleepBackend("slow", fast=False), SleepBackend("quick", fast=True)):
        monkeypatch.setitem(BACKENDS, backend.name, backend)


def test_tune_screens_everything_then_confirms_each_folds_winner_in_interleaved_trials(tiny):
    result = tune(tune_config(tiny))
    screened = {(r.fold, r.backend, r.precision) for r in result.screen if r.batch_size == 16}
    assert len(screened) == 2 * 2 * 2  # every fold x backend x precision at the middle batch size
    assert {r.batch_size for r in result.screen if (r.fold, r.backend, r.precision) == (2, "quick", "bf16")} == \
        {8, 16, 32}
    rec = result.recommended
    assert (rec.mode, rec.fold, rec.backend, rec.precision, rec.batch_size) == ("Folded", 2, "quick", "bf16", 32)
    assert rec.speedup == pytest.approx((2 + 32 * 0.1) / (2 + 32 * 0.02))  # ms per call, original / folded
    # the final stage also times the Original at the folded winner's configuration (TputNorm)
    assert rec.same_config_speedup == pytest.approx(rec.speedup)
    final_configs = {(r.fold, r.backend, r.precision, r.batch_size) for r in result.final}
    assert (1, "quick", "bf16", 32) in final_configs
    assert [r.trial for r in result.final].count(1) == [r.trial for r in result.final].count(2)


def test_tune_skips_batch_sizes_whose_call_would_be_too_long(tiny):
    notices = []
    result = tune(tune_config(tiny, folds=(1,), backends=("slow",), precisions=("fp32",), max_call_seconds=0.003),
                  on_notice=notices.append)
    assert {r.batch_size for r in result.screen} == {8, 16}
    assert any(n.startswith("not measured: tiny/game f=1 slow fp32 B=32") for n in notices)


def test_tune_rejects_bad_settings(tiny):
    with pytest.raises(ConfigError, match="top-k and trials"):
        tune(tune_config(tiny, top_k=0))
    with pytest.raises(ConfigError, match="needs trained weights"):
        tune(tune_config(tiny, data="somewhere"))


def test_excluded_pairs_are_never_timed_and_the_next_best_wins(tiny):
    result = tune(tune_config(tiny, exclude=(("quick", "bf16"),)))
    timed = {(r.backend, r.precision) for r in result.screen + result.final}
    assert ("quick", "bf16") not in timed and ("quick", "fp32") in timed and ("slow", "bf16") in timed
    assert (result.recommended.backend, result.recommended.precision) != ("quick", "bf16")


def test_tunes_fp32_accuracy_is_evaluates_on_the_same_checkpoint(tiny_task, tiny_checkpoint, image_folder, monkeypatch,
                                                                   tmp_path):
    monkeypatch.setattr(timing, "time", time)  # real backends: the real clock
    ckpt = tiny_checkpoint(2)
    data = image_folder(tiny_task, {"train": 1, "test": 5})  # a data set as training made it: evaluate reads it
    config = TuneConfig(target=str(ckpt), backends=("eager",), precisions=("fp32", "bf16"), batch_sizes=(4,),
                        screen_seconds=0.01, screen_warmup=0, final_seconds=0.01, final_warmup=0, trials=1,
                        peak_seconds=0, threads=1, data=str(data))
    (cost,) = tune(config).costs
    with torch_threads(1):  # as tune ran them
        reference = evaluate(ckpt, data, "test", batch_size=4, engine=Engine())
        bf16 = evaluate(ckpt, data, "test", batch_size=4, engine=Engine("eager", "bf16"))
    assert cost.images == reference["images"] == 5 * len(tiny_task.class_names)
    assert 100 * cost.fp32_accuracy == pytest.approx(reference["top1"], abs=1e-9)
    assert 100 * cost.accuracy == pytest.approx(bf16["top1"], abs=1e-9)
