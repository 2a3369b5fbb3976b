"""The parts of ``benchmarks/gpu_check.py``, one job each.

- :mod:`gpucheck.plan`: what the headline measures and the budget arithmetic (pure functions).
- :mod:`gpucheck.process`: one child process with a timeout that also ends what it started.
- :mod:`gpucheck.session`: the run's state, its budget clock, its log, and the step wrapper.
- :mod:`gpucheck.steps`: the checks before the headline (versions, peak, pytest, train, predict).
- :mod:`gpucheck.headline`: the ``foldedcnns bench`` stages (core, fp32 originals, compile, larger batch).
- :mod:`gpucheck.report`: ``summary.md``, ``best.csv``, ``bench.csv`` and ``steps.json``, built with
  :mod:`foldedcnns.benchmark.summary` and :mod:`foldedcnns.benchmark.records`.
"""
