"""Benchmarking: inference throughput, FLOPs/sec, peak and tuning.

* :mod:`~foldedcnns.benchmark.backends`: eager, channels-last, compile, onnxruntime, cuda-graphs behind
  ``Backend.is_available(device, precision)`` and ``Backend.prepare(model, example) -> Prepared``.
* :mod:`~foldedcnns.benchmark.runner`: ``run_benchmark(BenchConfig) -> BenchRun`` (records, notices, peaks).
* :mod:`~foldedcnns.benchmark.records`: ``BenchRecord`` and the CSV file.
* :mod:`~foldedcnns.benchmark.summary`: medians and best-vs-best speedups.
* :mod:`~foldedcnns.benchmark.peak`: measured dense-matmul peak, the ceiling for Utilization.
* :mod:`~foldedcnns.benchmark.tune`: search fold, backend, precision and batch size.
* :mod:`~foldedcnns.benchmark.profile`: per-layer times and FLOPs/sec.
* :mod:`~foldedcnns.benchmark.plots` and :mod:`~foldedcnns.benchmark.report`: figures and Markdown.
"""

from foldedcnns.benchmark.backends import (
    BACKENDS,
    PRECISIONS,
    Backend,
    BackendUnavailable,
    Prepared,
    available_backends,
    get_backend,
)
from foldedcnns.benchmark.peak import Peak, measure_peak
from foldedcnns.benchmark.records import CSV_COLUMNS, BenchRecord, read_csv, write_csv
from foldedcnns.benchmark.runner import BenchConfig, BenchRun, run_benchmark
from foldedcnns.benchmark.summary import BestRow, SummaryRow, best_configs, summarize
from foldedcnns.benchmark.tune import TuneConfig, TuneResult, tune

__all__ = [
    "BACKENDS",
    "CSV_COLUMNS",
    "PRECISIONS",
    "Backend",
    "BackendUnavailable",
    "BenchConfig",
    "BenchRecord",
    "BenchRun",
    "BestRow",
    "Peak",
    "Prepared",
    "SummaryRow",
    "TuneConfig",
    "TuneResult",
    "available_backends",
    "best_configs",
    "get_backend",
    "measure_peak",
    "read_csv",
    "run_benchmark",
    "summarize",
    "tune",
    "write_csv",
]
