"""The peak of each precision is the best dense kernel of the engines present and names it (int8 counts
integer ops), and a utilization above 100 % of it always carries its reason."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from foldedcnns.benchmark import peak as peak_module
from foldedcnns.benchmark.peak import (
    FLOAT_KERNEL,
    INT_MM_KERNEL,
    ONNXRUNTIME_KERNEL,
    OPENVINO_INT8_KERNEL,
    OPENVINO_KERNEL,
    kernel_calls,
    matmul_flops,
    measure_peak,
)
from foldedcnns.benchmark.records import (
    ABOVE_PEAK_NOTE,
    CSV_COLUMNS,
    REQUIRED_COLUMNS,
    BenchRecord,
    add_ratios,
    read_csv,
    write_csv,
)
from foldedcnns.benchmark.summary import (
    best_configs,
    best_table,
    summarize,
    summary_table,
    table_legend,
    utilization_footnotes,
)
from foldedcnns.runtime.backends import get_backend
from foldedcnns.runtime.engine import Engine


def test_int8_records_count_integer_ops(tmp_path: Path) -> None:
    row = BenchRecord("m", 1, 8, "Original", 1, 10.0, 1e9, "openvino", "int8", "cpu", 8)
    assert row.ops_unit == "int8 OP/s" and row.to_row()["Ops Unit"] == "int8 OP/s"
    assert BenchRecord("m", 1, 8, "Original", 1, 10.0, 1e9, "eager", "fp32", "cpu", 8).ops_unit == "FLOP/s"
    path = write_csv(tmp_path / "r.csv", [row])
    assert path.read_text().splitlines()[0].split(",") == list(CSV_COLUMNS)
    old = tmp_path / "old.csv"  # written before the Ops Unit column
    old.write_text(",".join(REQUIRED_COLUMNS) + "\nm,1,8,Original,1,10,1e9,,,eager,fp32,cpu,,8\n")
    assert read_csv(old)[0].ops_unit == "FLOP/s"


def test_int8_peak_is_an_integer_matmul_and_says_which() -> None:
    peak = measure_peak(Engine(precision="int8"), sizes=(64,), seconds=0.01)
    if peak.kernel == "none":
        pytest.skip("no int8 matmul here (neither torch._int_mm nor openvino)")
    assert peak.kernel in (INT_MM_KERNEL, OPENVINO_INT8_KERNEL) and peak.unit == "int8 OP/s"
    assert peak.flops_per_sec > 0 and peak.to_dict()["kernel"] == peak.kernel
    assert measure_peak(Engine(), sizes=(64,), seconds=0.01).unit == "FLOP/s"


def test_float_peaks_time_every_engine_present() -> None:
    """fp32 is timed on torch, OpenVINO and ONNX Runtime where they run here (the fp32 rows run on all)."""
    calls = kernel_calls(Engine(), 64)
    assert calls[FLOAT_KERNEL] is not None
    for kernel, backend in ((OPENVINO_KERNEL, "openvino"), (ONNXRUNTIME_KERNEL, "onnxruntime")):
        runs_here = get_backend(backend).is_available(torch.device("cpu"), "fp32")[0]
        assert (calls[kernel] is not None) == runs_here, kernel
    for call in calls.values():
        if call is not None:
            call()  # each is a ready n x n product
    peak = measure_peak(Engine(threads=1), sizes=(64,), seconds=0.03)
    assert peak.kernel in calls and calls[peak.kernel] is not None and peak.flops_per_sec > 0


def fake_kernels(monkeypatch: pytest.MonkeyPatch, costs: dict[str, float | None],
                 ) -> tuple[Callable[[], float], Counter[str]]:
    """Kernels whose one call advances a fake clock by ``costs[kernel]`` seconds (None: not present)."""
    now, made = [0.0], Counter[str]()

    def make(name: str, cost: float) -> Callable[[], Any]:
        def call() -> None:
            now[0] += cost
            made[name] += 1
        return call

    monkeypatch.setattr(peak_module, "kernel_calls", lambda engine, n, generator: {
        k: None if c is None else make(k, c) for k, c in costs.items()})
    return lambda: now[0], made


def test_peak_keeps_the_best_kernel_and_splits_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, made = fake_kernels(monkeypatch, {"slower": 1 / 1024, "faster": 1 / 2048, "absent": None, "crawl": 1.0})
    seconds = 24 / 1024  # 8/1024 s for each of the three kernels present, per size
    peak = measure_peak(Engine(), sizes=(128, 64), seconds=seconds, clock=clock)
    assert peak.kernel == "faster" and peak.matrix_size == 128
    assert peak.flops_per_sec == pytest.approx(matmul_flops(128) * 2048)
    # per size: one warm-up call each, then 8/1024 s of timed calls
    assert made["slower"] == 2 * (1 + 8) and made["faster"] == 2 * (1 + 16)
    # a kernel whose one call outlasts the whole budget is not timed again, nor tried at the larger size
    assert made["crawl"] == 1 and "absent" not in made
    assert peak.calls == (8 + 16 + 1) + (8 + 16)


def records_above_peak() -> list[BenchRecord]:
    rows = [BenchRecord("t", 1, 8, "Original", 1, 10.0, 3e11, "openvino", "fp32", "cpu", 8, utilization=0.6),
            BenchRecord("t", 1, 8, "Folded", 2, 30.0, 9.8e11, "openvino", "fp32", "cpu", 8, utilization=1.96)]
    return add_ratios(rows)


def test_a_utilization_above_the_peak_carries_its_reason(tmp_path: Path) -> None:
    original, folded = records_above_peak()
    assert original.utilization_note == "" and folded.utilization_note == ABOVE_PEAK_NOTE
    assert "Winograd" in ABOVE_PEAK_NOTE and ABOVE_PEAK_NOTE.startswith("over 100 %")
    rows = list(csv.DictReader(write_csv(tmp_path / "r.csv", [original, folded]).open(encoding="utf-8")))
    assert list(rows[0])[-1] == "Utilization Note" and list(rows[0])[: len(REQUIRED_COLUMNS)] == list(REQUIRED_COLUMNS)
    assert [r["Utilization Note"] for r in rows] == ["", ABOVE_PEAK_NOTE]
    assert read_csv(tmp_path / "r.csv")[1].utilization_note == ABOVE_PEAK_NOTE
    summary, best = summarize([original, folded]), best_configs([original, folded])
    assert [s.utilization_note for s in summary] == ["", ABOVE_PEAK_NOTE]
    assert [b.utilization_note for b in best] == ["", ABOVE_PEAK_NOTE] and best[1].to_dict()["utilization_note"]
    # tables: the figure is marked, and the legend printed beside the table says why
    assert [r[-1] for r in summary_table(summary)] == ["60.0%", "196.0%*"]
    assert best_table(best)[1][-1] == "196.0%*"
    assert table_legend(best) == [f"* utilization {ABOVE_PEAK_NOTE}"]
    assert table_legend(best[:1]) == []  # nothing above 100 %: no footnote
    assert utilization_footnotes([None, 0.5, 1.96, 2.1]) == [f"* utilization {ABOVE_PEAK_NOTE}"]
    assert table_legend(best, markdown=True)[0].startswith("\\* ")  # not a Markdown list item
