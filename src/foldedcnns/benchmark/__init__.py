"""Benchmarking: inference throughput, FLOPs/sec, peak and the speed search, over the runtime's engines
(:class:`foldedcnns.runtime.Engine`, :mod:`foldedcnns.runtime.backends`).

* :mod:`~foldedcnns.benchmark.grid`: what is timed (tasks, compound baselines, checkpoints x batch x engines).
* :mod:`~foldedcnns.benchmark.runner`: ``run_benchmark(BenchConfig) -> BenchRun`` (records, notices, peaks).
* :mod:`~foldedcnns.benchmark.records`: ``BenchRecord`` and the CSV file.
* :mod:`~foldedcnns.benchmark.summary`: medians and best-vs-best speedups.
* :mod:`~foldedcnns.benchmark.peak`: measured dense-matmul peak, the ceiling for Utilization.
* :mod:`~foldedcnns.benchmark.tune`: the speed search over fold, backend, precision and batch size (the
  whole ``tune``, with each precision's accuracy cost, is :func:`foldedcnns.workflows.tune.tune`).
* :mod:`~foldedcnns.benchmark.profilers`: per-layer times and FLOPs/sec, one profiler per engine.
* :mod:`~foldedcnns.benchmark.plots`: figures. The Markdown that writes this repository's docs/benchmarks.md
  against the project's targets lives with the script that uses it (benchmarks/docs_report.py).
"""

from foldedcnns.benchmark.peak import Peak, measure_peak
from foldedcnns.benchmark.records import CSV_COLUMNS, BenchRecord, read_csv, write_csv
from foldedcnns.benchmark.runner import BenchConfig, BenchRun, run_benchmark
from foldedcnns.benchmark.summary import BestRow, SummaryRow, best_configs, summarize
from foldedcnns.benchmark.tune import TuneConfig, TuneResult

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
    "write_csv",
]
