"""The headline: ``foldedcnns bench --json`` calls in four stages, each taking only what the budget leaves.

1. core: every task, one call each (folds, core backends, fp16/bf16, batch sizes); timed seconds re-fitted
   to the budget as it goes.
2. fp32 originals: fold 1 in fp32, all measured tasks in one call.
3. compile: each task's best folded precision and batch size, for fold 1 and the best fold.
4. larger batch: double the best folded configuration's batch while throughput still grows.

The records come from each call's JSON (``"records"``, :class:`~foldedcnns.benchmark.records.BenchRecord`
fields; its CSV if the JSON is not in that format); the best configurations that steer stages 3 and 4
come from ``summary.best_configs``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from foldedcnns.benchmark.records import BenchRecord, read_csv
from foldedcnns.benchmark.summary import best_configs, summarize
from gpucheck.plan import (
    CORE_SHARE,
    CUDA_ONLY_BACKENDS,
    WARM_S,
    bench_cost,
    best_folded,
    next_batch,
    refit_seconds,
    throughput_by_batch,
)
from gpucheck.report import write_reports
from gpucheck.session import Session, Step

RECORD_FIELDS = frozenset(f.name for f in dataclasses.fields(BenchRecord))


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _join(values: Iterable[int]) -> str:
    return ",".join(map(str, values))


def records_of(report: Any) -> list[BenchRecord] | None:
    """The records of one ``foldedcnns bench --json`` report, or None when it has none (or not that format)."""
    if not isinstance(report, Mapping) or not isinstance(report.get("records"), list) or not report["records"]:
        return None
    return [BenchRecord(**{k: v for k, v in r.items() if k in RECORD_FIELDS}) for r in report["records"]]


def bench(session: Session, stage: str, tasks: Sequence[str], *, folds: Sequence[int], batch_sizes: Sequence[int],
          backends: Sequence[str], precisions: Sequence[str], seconds: float, limit_s: float,
          failures: list[str]) -> float | None:
    """One ``foldedcnns bench --json`` call; its records join ``session.records``. Returns its wall seconds, or
    None when it failed (added to ``failures``) or was cut by the budget (a notice)."""
    session.bench_calls += 1
    name = f"{stage} {tasks[0]}" if len(tasks) == 1 else stage
    csv_path = session.work / "bench" / f"{session.bench_calls:03d}-{slug(name)}.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    result = session.cli("bench", "--tasks", *tasks, "--folds", _join(folds), "--batch-sizes", _join(batch_sizes),
                         "--backends", ",".join(backends), "--precisions", ",".join(precisions),
                         "--device", session.device, "--trials", str(session.plan.trials),
                         "--seconds", f"{seconds:.3f}", "--peak-seconds", "0", "--out", str(csv_path), "--json",
                         "--overwrite", limit_s=limit_s)
    report = session.json_of(result)
    if isinstance(report, Mapping):
        for text in report.get("notices", []):
            session.notice(text)
    session.headline["stages"].append({
        "stage": stage, "tasks": list(tasks), "seconds": result.seconds,
        "settings": f"f={_join(folds)} {'/'.join(backends)} {'/'.join(precisions)} B={_join(batch_sizes)} "
                    f"trials={session.plan.trials} s={seconds:.3f}"})
    records = records_of(report)
    if records is None and result.ok and csv_path.is_file():  # JSON not as expected: the CSV has the same records
        records = read_csv(csv_path) or None
    if records:
        session.records += records
        write_reports(session)
        return result.seconds
    if result.budget_cut:
        session.notice(f"headline: {name} cut by the budget after {result.seconds:.0f} s")
    else:
        failures.append(f"{name}: {result.why() if not result.ok else 'bench --json printed no records'}")
    return None


def do_headline(session: Session, step: Step) -> None:
    """The four stages; a failed bench call fails the step, a budget cut only leaves work out (a notice)."""
    backends = list(session.plan.backends)
    if not session.cuda:
        dropped = [b for b in backends if b in CUDA_ONLY_BACKENDS]
        backends = [b for b in backends if b not in CUDA_ONLY_BACKENDS]
        if dropped:
            session.notice(f"skipped {', '.join(dropped)} on {session.device}: CUDA only")
    failures: list[str] = []
    measured = core_stage(session, backends, failures)
    fp32_stage(session, measured, backends, failures)
    compile_stage(session, measured, failures)
    grow_stage(session, measured, failures)
    step.data = {"records": len(session.records), "tasks_measured": measured, "failures": failures}
    step.detail = f"{len(measured)}/{len(session.tasks)} tasks, {len(session.records)} records"
    if failures:
        step.status = "failed"
        step.detail += "; " + "; ".join(failures)
    elif not measured:
        step.status = "budget"


def core_stage(session: Session, backends: Sequence[str], failures: list[str]) -> list[str]:
    """Every task, one bench call each; the timed seconds are fitted to the budget as it goes."""
    plan, tasks = session.plan, session.tasks
    n_core = len(plan.folds) * len(backends) * len(plan.precisions) * len(plan.batch_sizes)
    n_fp32 = len(backends) * len(plan.batch_sizes)
    fixed = plan.start_s + n_core * plan.prepare_s  # set-up of one call; measured after the first
    measured: list[str] = []
    # the core gets CORE_SHARE of what the fp32 originals leave; compile and larger batches the rest.
    # Every task still runs (at the least timed seconds) while the whole budget allows.
    fp32_reserve = bench_cost(n_fp32 * len(tasks), plan.trials, plan.seconds[0], plan)
    core_budget, core_start = CORE_SHARE * max(0.0, session.remaining() - fp32_reserve), session.elapsed()
    for i, task in enumerate(tasks):
        left = len(tasks) - i
        seconds = refit_seconds(core_budget - (session.elapsed() - core_start), left, fixed, n_core, plan)
        cost = fixed + n_core * plan.trials * (seconds + WARM_S)
        available = session.remaining() - bench_cost(n_fp32 * left, plan.trials, plan.seconds[0], plan)
        if available < cost:
            session.headline["not_measured"] += tasks[i:]
            session.notice(f"headline: budget left for {i} of {len(tasks)} tasks; not measured: "
                           f"{', '.join(tasks[i:])}")
            break
        spent = bench(session, "core", [task], folds=plan.folds, batch_sizes=plan.batch_sizes, backends=backends,
                      precisions=plan.precisions, seconds=seconds, limit_s=max(3 * cost, 120), failures=failures)
        if spent is not None:
            measured.append(task)
            session.core_seconds = seconds
            fixed = max(1.0, spent - n_core * plan.trials * (seconds + WARM_S))
    return measured


def fp32_stage(session: Session, measured: Sequence[str], backends: Sequence[str], failures: list[str]) -> None:
    """The originals in fp32, every measured task in one bench call."""
    plan = session.plan
    if not measured:
        return
    n = len(backends) * len(plan.batch_sizes) * len(measured)
    seconds = session.core_seconds  # as the fp16/bf16 originals were timed, if the budget allows
    while seconds > plan.seconds[0] and session.remaining() < bench_cost(n, plan.trials, seconds, plan):
        seconds = max(plan.seconds[0], seconds / 2)
    cost = bench_cost(n, plan.trials, seconds, plan)
    if session.remaining() < cost:
        session.notice("headline: no budget left for the fp32 originals")
        return
    bench(session, "fp32 originals", measured, folds=[1], batch_sizes=plan.batch_sizes, backends=backends,
          precisions=["fp32"], seconds=seconds, limit_s=max(3 * cost, 120), failures=failures)


def compile_stage(session: Session, measured: Sequence[str], failures: list[str]) -> None:
    """compile at each task's best folded precision and batch size, for fold 1 and the best fold."""
    plan = session.plan
    tasks = list(measured)[:plan.compile_tasks] if plan.compile_tasks is not None else list(measured)
    best = best_configs(session.records)
    per_compile = plan.compile_s  # measured after the first call
    for i, task in enumerate(tasks):
        top = best_folded(best, task)
        if top is None:
            continue
        cost = plan.start_s + 2 * per_compile + 2 * plan.trials * (plan.seconds[1] + WARM_S)
        if session.remaining() < cost:
            session.notice(f"headline: budget left for compile on {i} of {len(tasks)} tasks; not compiled: "
                           f"{', '.join(tasks[i:])}")
            return
        spent = bench(session, "compile", [task], folds=[1, top.fold], batch_sizes=[top.batch_size],
                      backends=["compile"], precisions=[top.precision], seconds=plan.seconds[1],
                      limit_s=max(4 * cost, 180), failures=failures)
        if spent is not None:
            per_compile = max(1.0, (spent - plan.start_s) / 2)


def grow_stage(session: Session, measured: Sequence[str], failures: list[str]) -> None:
    """Double the batch size of each task's best folded configuration among the core backends (those
    timed at several batch sizes) while throughput still grows; one doubling per task per round."""
    plan = session.plan
    active = list(measured)
    for _ in range(plan.max_grow_steps):
        for task in list(active):
            core = [r for r in session.records if r.backend in plan.backends]
            top = best_folded(best_configs(core), task)
            by_batch = {} if top is None else throughput_by_batch(
                summarize(core), model=task, backend=top.backend, precision=top.precision, fold=top.fold)
            batch = next_batch(by_batch, max_batch=plan.max_batch)
            if top is None or batch is None:
                active.remove(task)
                continue
            folds = [1, top.fold]
            cost = bench_cost(len(folds), plan.trials, session.core_seconds, plan)
            if session.remaining() < cost:
                session.notice(f"headline: no budget left to try batch {batch} for {task} and later tasks")
                return
            if bench(session, "larger batch", [task], folds=folds, batch_sizes=[batch], backends=[top.backend],
                     precisions=[top.precision], seconds=session.core_seconds, limit_s=max(4 * cost, 120),
                     failures=failures) is None:
                active.remove(task)
