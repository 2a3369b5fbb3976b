"""Benchmark arithmetic and files: batch rounding, timing, FLOPs/sec, ratios, CSV, summaries, peak."""

import csv
import itertools

import pytest

from foldedcnns.benchmark.peak import matmul_flops, measure_peak
from foldedcnns.benchmark.records import (
    CSV_COLUMNS,
    BenchRecord,
    add_ratios,
    flops_per_sec,
    read_csv,
    utilization,
    write_csv,
)
from foldedcnns.benchmark.summary import best_configs, summarize
from foldedcnns.benchmark.timing import folded_inputs, images_per_call, time_calls
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.runtime.engine import Engine


def rec(trial, fold, tput, *, backend="eager", precision="fp32", batch=1024, model="m", fpi=10.0):
    mode = "Original" if fold == 1 else "Folded"
    return BenchRecord(model=model, trial=trial, batch_size=batch, mode=mode, fold=fold, throughput=tput,
                       flops_per_sec=flops_per_sec(fpi, tput), backend=backend, precision=precision, device="cpu",
                       images=images_per_call(batch, fold), flops_per_image=fpi)


def test_batch_counts_images_and_rounds_up_to_a_multiple_of_the_fold():
    assert folded_inputs(1024, 4) == 256 and images_per_call(1024, 4) == 1024
    assert folded_inputs(1024, 3) == 342 and images_per_call(1024, 3) == 1026
    assert images_per_call(1, 4) == 4 and images_per_call(7, 1) == 7
    with pytest.raises(ConfigError, match="batch size must be a positive integer"):
        folded_inputs(0, 2)


def test_time_calls_counts_warmup_apart_and_divides_images_by_seconds():
    calls, syncs = [], []
    ticks = itertools.count(0.0, 0.5)  # every clock read advances 0.5 s
    timing = time_calls(calls.append, "x", images=100, warmup=2, iterations=3, synchronize=lambda: syncs.append(1),
                        clock=lambda: next(ticks))
    assert len(calls) == 5 and len(syncs) == 2
    assert timing.calls == 3 and timing.seconds == 0.5 and timing.throughput == pytest.approx(600.0)


def test_time_calls_with_a_time_budget_runs_until_it_is_spent():
    ticks = itertools.count(0.0, 0.25)
    calls = []
    timing = time_calls(calls.append, "x", images=10, warmup=0, seconds=1.0, clock=lambda: next(ticks))
    assert timing.calls == 4 and len(calls) == 4
    with pytest.raises(ConfigError, match="exactly one"):
        time_calls(calls.append, "x", images=1, warmup=0, iterations=2, seconds=1.0)


def test_flops_per_sec_and_utilization_arithmetic():
    assert flops_per_sec(16_400_512, 2_000.0) == pytest.approx(32.801024e9)
    assert utilization(50e9, 100e9) == pytest.approx(0.5)
    assert utilization(50e9, None) is None


def test_ratios_divide_by_the_original_of_the_same_trial_and_configuration():
    records = add_ratios([
        rec(1, 1, 100.0), rec(1, 4, 250.0, fpi=11.0), rec(2, 1, 200.0), rec(2, 4, 300.0, fpi=11.0),
        rec(1, 4, 50.0, precision="bf16"),  # no bf16 original: no ratio
    ])
    assert [r.tput_norm for r in records[:4]] == [1.0, 2.5, 1.0, 1.5]
    assert records[1].flop_norm == pytest.approx(2.5 * 11 / 10)
    assert records[4].tput_norm is None and records[4].flop_norm is None


def test_csv_has_the_original_columns_first_and_round_trips(tmp_path):
    records = add_ratios([rec(1, 1, 1000.0), rec(1, 3, 1500.0)])
    path = write_csv(tmp_path / "out" / "r.csv", records)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0][:9] == ["Model", "Trial", "Batch Size", "Mode", "Fold", "Throughput", "FLOPs/sec", "TputNorm",
                           "FLOPNorm"]
    assert rows[0][9:13] == ["Backend", "Precision", "Device", "Utilization"]
    folded = dict(zip(rows[0], rows[2], strict=True))
    assert folded["Batch Size"] == "1024" and folded["Images"] == "1026" and folded["Mode"] == "Folded"
    assert folded["TputNorm"] == "1.5000" and folded["Utilization"] == ""
    back = read_csv(path)
    assert [(r.model, r.fold, r.throughput, r.tput_norm, r.images) for r in back] == \
        [("m", 1, 1000.0, 1.0, 1024), ("m", 3, 1500.0, 1.5, 1026)]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_read_csv_rejects_foreign_files(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="lacks the columns"):
        read_csv(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_csv(tmp_path / "missing.csv")


def test_summary_reports_medians_and_best_vs_best_per_trial():
    records = add_ratios([
        rec(1, 1, 100.0), rec(1, 1, 300.0, backend="ort"), rec(1, 4, 200.0), rec(1, 4, 360.0, backend="ort"),
        rec(2, 1, 110.0), rec(2, 1, 200.0, backend="ort"), rec(2, 4, 220.0), rec(2, 4, 400.0, backend="ort"),
        rec(3, 1, 90.0), rec(3, 1, 250.0, backend="ort"), rec(3, 4, 210.0), rec(3, 4, 380.0, backend="ort"),
    ])
    rows = {(r.backend, r.fold): r for r in summarize(records)}
    assert rows[("eager", 1)].throughput == 100.0 and rows[("eager", 1)].trials == 3
    assert rows[("eager", 4)].tput_norm == pytest.approx(2.0)  # median of 2.0, 2.0, 2.33
    assert rows[("ort", 1)].spread == pytest.approx((300 - 200) / 250)
    best = {b.fold: b for b in best_configs(records)}
    assert best[1].backend == "ort" and best[4].backend == "ort"
    assert best[4].speedup == pytest.approx(1.52)  # median of 360/300, 400/200, 380/250
    assert best[4].same_config_speedup == pytest.approx(1.52)


def test_measured_peak_is_positive_and_counts_2n3():
    assert matmul_flops(1000) == 2_000_000_000
    peak = measure_peak(Engine(threads=1), sizes=(64, 128), seconds=0.01)
    assert peak.flops_per_sec > 0 and peak.matrix_size in (64, 128) and peak.calls >= 2
    assert (peak.device, peak.precision, peak.threads) == ("cpu", "fp32", 1)  # the engine's device and threads
