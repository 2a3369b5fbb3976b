"""The benchmark runner with stub backends: interleaving, skipping, batch rounding, FLOPs/sec, peaks."""

import pytest
import torch

from foldedcnns.analysis import flops_per_image
from foldedcnns.benchmark.peak import Peak
from foldedcnns.benchmark.runner import BenchConfig, model_entries, run_benchmark
from foldedcnns.data.calibration import Calibration
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends import BACKENDS, Backend, BackendUnavailable, Runner


@pytest.fixture()
def tiny(tiny_task_file):
    """The tiny task as the benchmark takes it: the path of its description, a string."""
    return str(tiny_task_file)


class StubBackend(Backend):
    """Logs every timed call as (fold, precision, folded rows); never touches the model's weights.

    The one call each preparation makes to check the runner (``Backend.prepare``) is not logged."""

    def __init__(self, name, log, *, missing=None, refuse=()):
        self.name, self.log, self.missing, self.refuse = name, log, missing, refuse

    def available(self, device, precision):
        return (False, self.missing) if self.missing else (True, "")

    def build(self, model, example, engine, fold):
        if engine.precision in self.refuse:
            raise BackendUnavailable(f"no {engine.precision} kernels in the stub")
        checked = []

        def run(x):
            if checked:
                self.log.append((self.name, fold, engine.precision, x.shape[0]))
            checked.append(True)
            return x.new_zeros(x.shape[0], 3 * fold)

        return Runner(run, lambda x: x, lambda y: y)


@pytest.fixture()
def register(monkeypatch):
    """Register stub backends for one test (the registry is restored afterwards)."""

    def add(*backends):
        for backend in backends:
            monkeypatch.setitem(BACKENDS, backend.name, backend)

    return add


def config(tiny, **kw):
    base = dict(tasks=(tiny,), folds=(1, 2), batch_sizes=(8,), backends=("stub",), precisions=("fp32",),
                warmup=0, iterations=1, seconds=None, trials=2, peak_seconds=0, threads=1)
    base.update(kw)
    return BenchConfig(**base)


def test_configurations_are_interleaved_original_then_folded_in_every_trial(tiny, register):
    log = []
    register(StubBackend("stub", log))
    run = run_benchmark(config(tiny, precisions=("fp32", "bf16"), trials=3))
    timed = [(fold, precision) for _, fold, precision, _ in log]  # the stub is not called while preparing
    one_trial = [(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")]
    assert timed == one_trial * 3
    assert [r.trial for r in run.records] == [1] * 4 + [2] * 4 + [3] * 4
    assert [(r.mode, r.fold) for r in run.records[:2]] == [("Original", 1), ("Folded", 2)]


def test_absent_backend_and_unsupported_precision_are_skipped_with_one_notice(tiny, register):
    log, notices = [], []
    register(StubBackend("stub", log, refuse=("bf16",)), StubBackend("gone", log, missing="gone is not installed"))
    run = run_benchmark(config(tiny, backends=("gone", "stub"), precisions=("fp32", "bf16")),
                        on_notice=notices.append)
    assert {(r.backend, r.precision) for r in run.records} == {("stub", "fp32")}
    assert len(run.records) == 2 * 2
    assert notices == run.notices
    assert "skipped gone fp32 on cpu: gone is not installed" in notices
    assert sum("gone" in n for n in notices) == 2  # one line per (backend, precision), not per model
    assert any(n.startswith("skipped stub bf16 for tiny/game f=1") and "no bf16 kernels" in n for n in notices)


def test_each_candidate_runs_on_an_engine_with_the_configs_threads_and_int8_calibration(tiny, register):
    engines = []

    class Quantizing(StubBackend):
        quantizes = True

        def build(self, model, example, engine, fold):
            engines.append(engine)
            return super().build(model, example, engine, fold)

    register(Quantizing("stub", []))
    calibration = Calibration(torch.rand(4, 3, 16, 20), "four test images")
    run = run_benchmark(config(tiny, precisions=("fp32", "int8"), trials=1, calibration=calibration))
    assert {(r.precision, r.fold) for r in run.records} == {("fp32", 1), ("fp32", 2), ("int8", 1), ("int8", 2)}
    assert {(e.backend, e.device, e.threads) for e in engines} == {("stub", "cpu", 1)}
    assert all(e.calibration is calibration for e in engines)


def test_batch_not_divisible_by_fold_rounds_up_and_reports_true_images(tiny, register):
    log = []
    register(StubBackend("stub", log))
    run = run_benchmark(config(tiny, folds=(1, 3), batch_sizes=(10,), trials=1))
    by_fold = {r.fold: r for r in run.records}
    assert by_fold[1].images == 10 and by_fold[3].images == 12 and by_fold[3].batch_size == 10
    assert ("stub", 3, "fp32", 4) in log  # ceil(10 / 3) folded inputs


def test_flops_per_sec_is_per_image_flops_times_throughput_and_utilization_uses_the_peak(tiny, register):
    peak = Peak("cpu", "fp32", 1e12, 1024, 1, 1)
    register(StubBackend("stub", []))
    run = run_benchmark(config(tiny, trials=1), peaks={"fp32": peak})
    entries = {e.config.fold: e for e in model_entries((tiny,), (1, 2))}
    for r in run.records:
        assert r.flops_per_image == flops_per_image(entries[r.fold].config)
        assert r.flops_per_sec == pytest.approx(r.flops_per_image * r.throughput)
        assert r.utilization == pytest.approx(r.flops_per_sec / 1e12)
        assert r.throughput == pytest.approx(r.calls * r.images / r.seconds)
    original, folded = run.records
    assert original.tput_norm == 1.0 and folded.tput_norm == pytest.approx(folded.throughput / original.throughput)
    assert run.peaks == {"fp32": peak}


def test_compound_tasks_bring_their_original_and_checkpoints_keep_their_fold(tiny_checkpoint):
    entries = model_entries(["compound/lol/goldnumber-fraction"], (1, 2, 3, 4))
    assert [(e.model, e.config.mode, e.config.fold) for e in entries] == [
        ("lol/goldnumber-fraction", "Original", 1), ("lol/goldnumber-fraction", "Compound", 1)]
    entries = model_entries([str(tiny_checkpoint(3))], (1, 2, 4))
    assert [(e.config.mode, e.config.fold) for e in entries] == [("Original", 1), ("Folded", 3)]


def test_bad_options_are_one_line_config_errors(tiny):
    with pytest.raises(ConfigError, match="unknown backend 'nope'"):
        run_benchmark(config(tiny, backends=("nope",)))
    with pytest.raises(ConfigError, match="unknown precision"):
        run_benchmark(config(tiny, backends=("eager",), precisions=("fp8",)))
    with pytest.raises(ConfigError, match="exactly one"):
        run_benchmark(config(tiny, backends=("eager",), seconds=1.0))
    with pytest.raises(ConfigError, match="trials"):
        run_benchmark(config(tiny, backends=("eager",), trials=0))
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        run_benchmark(config(tiny, backends=("eager",), device="tpu"))
