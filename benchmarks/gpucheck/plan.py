"""What the headline measures, and the budget arithmetic that fits it into the wall-clock budget.

Pure functions of numbers and library rows, so the tests can check them without running anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from foldedcnns.benchmark.summary import BestRow, SummaryRow

FAMILIES = ("game", "noscope")
CUDA_ONLY_BACKENDS = ("cuda-graphs",)
FOLDED = "Folded"
DEFAULT_BUDGET_S = 480.0
QUICK_BUDGET_S = 110.0  # a dry run stays under 2 minutes even on a busy 2-core machine (work is cut, not failed)
PYTEST_SHARE = 0.4  # the GPU tests may take at most this share of the budget
RESERVE_S = 8.0  # kept back at the end for the summary
CORE_SHARE = 0.7  # of the budget left after the fp32 originals' share
GROWTH = 1.05  # a larger batch is tried while throughput grew by at least this factor
WARM_S = 0.02  # the untimed calls of each timed block


@dataclass(frozen=True)
class Plan:
    """What the headline measures; ``full`` on a GPU, ``quick`` for a dry run."""

    folds: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    trials: int
    seconds: tuple[float, float]  # (least, most) timed seconds per configuration and trial
    max_tasks: int | None
    compile_tasks: int | None
    max_batch: int
    max_grow_steps: int
    pytest_timeout_s: float
    # cost model for the budget (seconds): per bench process, per configuration prepared, per compile
    start_s: float
    prepare_s: float
    compile_s: float


def make_plan(device: str, quick: bool) -> Plan:
    """The full GPU grid, or (``quick``) a tiny one that a CPU dry run finishes inside its budget."""
    cuda = device.startswith("cuda")
    if quick:
        return Plan(folds=(1, 2), batch_sizes=(8, 32), backends=("eager", "channels-last", "cuda-graphs"),
                    precisions=("fp16", "bf16") if cuda else ("bf16",), trials=1, seconds=(0.05, 0.05),
                    max_tasks=2, compile_tasks=1, max_batch=64, max_grow_steps=1, pytest_timeout_s=300,
                    start_s=5.0, prepare_s=0.2, compile_s=25.0 if cuda else 12.0)
    return Plan(folds=(1, 2, 3, 4), batch_sizes=(256, 1024, 4096), backends=("eager", "channels-last", "cuda-graphs"),
                precisions=("fp16", "bf16"), trials=3, seconds=(0.02, 0.1), max_tasks=None, compile_tasks=None,
                max_batch=65536, max_grow_steps=4, pytest_timeout_s=300,
                start_s=8.0 if cuda else 5.0, prepare_s=0.25, compile_s=20.0 if cuda else 12.0)


def interleave_families(tasks: Sequence[tuple[str, str]]) -> list[str]:
    """Task names ``[(name, family), ...]`` taken round-robin over families, so a budget cut keeps both."""
    groups: dict[str, list[str]] = {}
    for name, family in tasks:
        groups.setdefault(family, []).append(name)
    out: list[str] = []
    while any(groups.values()):
        for names in groups.values():
            if names:
                out.append(names.pop(0))
    return out


def best_folded(best: Iterable[BestRow], model: str) -> BestRow | None:
    """The fastest folded configuration of ``model`` over every fold, from ``summary.best_configs`` rows."""
    return max((b for b in best if b.model == model and b.mode == FOLDED), key=lambda b: b.throughput, default=None)


def throughput_by_batch(rows: Iterable[SummaryRow], *, model: str, backend: str, precision: str,
                        fold: int) -> dict[int, float]:
    """Median throughput per batch size of one model, backend, precision and fold (``summary.summarize`` rows)."""
    mode = "Original" if fold == 1 else FOLDED
    return {r.batch_size: r.throughput for r in rows
            if (r.model, r.mode, r.fold, r.backend, r.precision) == (model, mode, fold, backend, precision)}


def next_batch(by_batch: Mapping[int, float], *, growth: float = GROWTH, max_batch: int) -> int | None:
    """Twice the largest batch measured if throughput still grew by ``growth`` over the one before, else None."""
    sizes = sorted(by_batch)
    if len(sizes) < 2 or sizes[-1] * 2 > max_batch:
        return None
    last, before = by_batch[sizes[-1]], by_batch[sizes[-2]]
    return sizes[-1] * 2 if before > 0 and last >= growth * before else None


def bench_cost(n_configs: int, trials: int, seconds: float, plan: Plan, compiles: int = 0) -> float:
    """Estimated wall seconds of one ``foldedcnns bench`` process."""
    return (plan.start_s + n_configs * plan.prepare_s + compiles * plan.compile_s
            + n_configs * trials * (seconds + WARM_S))


def refit_seconds(available_s: float, n_processes: int, fixed_s: float, n_configs: int, plan: Plan) -> float:
    """Timed seconds per configuration and trial so that ``n_processes`` bench calls, each with the set-up
    seconds ``fixed_s`` and ``n_configs`` configurations, fit ``available_s``; within ``plan.seconds``."""
    low, high = plan.seconds
    if n_processes <= 0 or n_configs <= 0:
        return high
    return min(high, max(low, (available_s / n_processes - fixed_s) / (n_configs * plan.trials) - WARM_S))
