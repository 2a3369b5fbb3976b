"""Benchmarking: inference throughput, FLOPs/sec, peak and tuning, over the runtime's backends
(:mod:`foldedcnns.runtime.backends`).

* :mod:`~foldedcnns.benchmark.runner`: ``run_benchmark(BenchConfig) -> BenchRun`` (records, notices, peaks).
* :mod:`~foldedcnns.benchmark.records`: ``BenchRecord`` and the CSV file.
* :mod:`~foldedcnns.benchmark.summary`: medians and best-vs-best speedups.
* :mod:`~foldedcnns.benchmark.peak`: measured dense-matmul peak, the ceiling for Utilization.
* :mod:`~foldedcnns.benchmark.tune`: search fold, backend, precision and batch size.
* :mod:`~foldedcnns.benchmark.profile`: per-layer times and FLOPs/sec.
* :mod:`~foldedcnns.benchmark.plots`: figures. The Markdown that writes this repository's docs/benchmarks.md
  against the project's targets lives with the script that uses it (benchmarks/docs_report.py).
"""

from foldedcnns.benchmark.peak import Peak, measure_peak
from foldedcnns.benchmark.records import CSV_COLUMNS, BenchRecord, read_csv, write_csv
from foldedcnns.benchmark.runner import BenchConfig, BenchRun, run_benchmark
from foldedcnns.benchmark.summary import BestRow, SummaryRow, best_configs, summarize
from foldedcnns.benchmark.tune import TuneConfig, TuneResult, tune

__all__ = [
    "CSV_COLUMNS",
    "BenchConfig",
    "BenchRecord",
    "BenchRun",
    "BestRow",
    "Peak",
    "SummaryRow",
    "TuneConfig",
    "TuneResult",
    "best_configs",
    "measure_peak",
    "read_csv",
    "run_benchmark",
    "summarize",
    "tune",
    "write_csv",
]
