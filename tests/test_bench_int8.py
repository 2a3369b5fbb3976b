"""INT8 rows count integer operations, and the int8 peak is an integer matmul that names its kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from foldedcnns.benchmark.peak import INT_MM_KERNEL, OPENVINO_INT8_KERNEL, measure_peak
from foldedcnns.benchmark.records import CSV_COLUMNS, REQUIRED_COLUMNS, BenchRecord, read_csv, write_csv
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
