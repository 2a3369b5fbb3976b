"""A sweep on Ray: every (task, fold, seed) run is a Ray task; a folded run waits for its fold-1 teacher.

Each run is :func:`~foldedcnns.training.sweep_plan.execute` in a Ray worker with ``cpus_per_run`` CPUs
(as many PyTorch threads, rounded down) and ``gpus_per_run`` GPUs (fractional: several runs share a GPU).
A student gets its teacher's task as an argument, so Ray starts it only once the teacher has ended.

Faults:

* a worker that dies (killed, out of memory, node lost) is a system failure: Ray runs the task again
  (:data:`RAY_RETRIES` times) and the run resumes from its last ``last.pt`` with its RNG state;
* an error inside the run (bad data, a bad description) is returned as a failed outcome, never retried;
* SIGINT/SIGTERM on the driver cancel every task not yet ended (``force``: their workers are killed), and
  a Ray this sweep started is shut down, before the interrupt goes on (exit 130/143);
* a driver that dies takes a local Ray with it (Ray ends a job's workers when its driver dies); the same
  command then reads the finished runs back and continues the others.

Runs read and write by path, so on a cluster OUT, the data and the task descriptions must be on storage
every node mounts at the same path, and every node needs foldedcnns installed. Before any run starts,
one probe per node checks that it sees this sweep's OUT (the marker the driver just wrote) and can
write there (:func:`probe_out`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from foldedcnns.errors import ConfigError, first_line
from foldedcnns.training.sweep_plan import (
    FAILED,
    SWEEP_MARKER,
    RaySweepOptions,
    RunKey,
    RunOutcome,
    SweepRun,
    execute,
    read_back,
    teacher_missing,
)
from foldedcnns.utils.outputs import describe_os_error
from foldedcnns.utils.signals import raise_on_signals

RAY_RETRIES = 3  # a run whose worker dies is run again this many times (each time resuming its last.pt)
WAIT_SECONDS = 0.5  # the driver wakes this often, so a signal is handled at once
CANCEL_SECONDS = 10.0  # after an interrupt: how long to wait for the cancelled tasks' workers to end
PROBE_SECONDS = 120.0  # the per-node OUT check (a node may first have to start a worker)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--ray needs Ray; install it with: pip install 'foldedcnns[ray]'") from exc
    return ray


def _connect(ray: Any, options: RaySweepOptions) -> bool:
    """Join the cluster at ``options.address`` or start a local Ray; True when this call started it."""
    if ray.is_initialized():
        return False
    try:
        if options.address:
            ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(num_cpus=options.num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=False)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {options.address}: {first_line(exc)}; start one with "
                          "'ray start --head' or leave out --ray-address to run a local Ray") from exc
    return True


def probe_out(out: str, token: str) -> str | None:
    """On one node: None when ``out`` holds this sweep's marker (written by the driver, with ``token``) and a
    file can be written there; else why not, in words."""
    marker = Path(out) / SWEEP_MARKER
    try:
        if marker.read_text(encoding="utf-8").strip() != token:
            return f"{marker} there belongs to another sweep"
    except FileNotFoundError:
        return f"{out} does not exist there"
    except OSError as exc:
        return describe_os_error(exc, marker, action="read")
    probe = Path(out) / f".probe-{uuid.uuid4().hex}"
    try:
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        return describe_os_error(exc, probe)
    return None


def check_cluster(ray: Any, options: RaySweepOptions, out: Path, token: str) -> None:
    """Refuse a run that no node can hold and an OUT that a node cannot see or write, in one line."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("Resources", {}).get("GPU", 0) for n in nodes), default=0)
    if options.cpus_per_run > cpus:
        raise ConfigError(f"--cpus-per-run {options.cpus_per_run:g} is more than any Ray node has (at most "
                          f"{cpus:g} CPUs); pass a smaller --cpus-per-run")
    if options.gpus_per_run > gpus:
        raise ConfigError(f"--gpus-per-run {options.gpus_per_run:g} is more than any Ray node has (at most "
                          f"{gpus:g} GPUs); pass a smaller --gpus-per-run or --device cpu")
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(probe_out)
    refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(out), token) for n in nodes]
    for node, problem in zip(nodes, ray.get(refs, timeout=PROBE_SECONDS), strict=True):
        if problem is not None:
            raise ConfigError(f"--out {out} cannot be used by Ray node {node.get('NodeManagerAddress')}: {problem}; "
                              "on a cluster OUT must be on storage every node mounts at the same path")


def _collect(ray: Any, ref: Any, run: SweepRun, outcomes: dict[RunKey, RunOutcome]) -> RunOutcome:
    """The outcome of a task that ended: what it returned, or, when its worker died every time (or its teacher's
    did), a failed (not run) outcome."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        skipped = teacher_missing(run, outcomes.get(run.teacher)) if run.teacher is not None else None
        if skipped is not None:
            return skipped
        return RunOutcome(run.key, FAILED, error=f"its Ray task failed {RAY_RETRIES + 1} times "
                                                 f"({type(exc).__name__}: {first_line(exc)})")


def _cancel(ray: Any, pending: Sequence[Any]) -> None:
    """Cancel the tasks not yet ended, killing their workers, and wait (a while) until they are gone."""
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    with contextlib.suppress(Exception):
        ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_SECONDS)


def _run_all(ray: Any, runs: Sequence[SweepRun], options: RaySweepOptions, record: Callable[[RunOutcome], None],
             on_batch: Callable[[SweepRun, int, int], None] | None) -> None:
    task = ray.remote(execute)
    refs: dict[RunKey, Any] = {}
    outcomes: dict[RunKey, RunOutcome] = {}
    pending: dict[Any, SweepRun] = {}
    try:
        for run in runs:
            earlier = read_back(run)
            if earlier is not None:
                outcomes[run.key] = earlier
                record(earlier)
                continue
            teacher = None if run.teacher is None else refs.get(run.teacher, outcomes.get(run.teacher))
            ref = task.options(name=f"sweep {run.name}", num_cpus=options.cpus_per_run,
                               num_gpus=options.gpus_per_run, max_retries=RAY_RETRIES,
                               retry_exceptions=False).remote(run, teacher, options, on_batch)
            refs[run.key] = ref
            pending[ref] = run
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
            for ref in ready:
                run = pending.pop(ref)
                outcome = _collect(ray, ref, run, outcomes)
                outcomes[run.key] = outcome
                record(outcome)
    except BaseException:
        _cancel(ray, list(pending))
        raise


def run_on_ray(runs: Sequence[SweepRun], options: RaySweepOptions, out: Path, token: str,
               record: Callable[[RunOutcome], None],
               on_batch: Callable[[SweepRun, int, int], None] | None = None) -> None:
    """Run ``runs`` as Ray tasks; ``record(outcome)`` in the driver as each one ends (read-back runs first).

    ``out`` must already hold the sweep's marker with ``token`` (checked on every node). SIGINT/SIGTERM
    cancel the tasks and raise :class:`~foldedcnns.utils.signals.Interrupted`.
    """
    ray = _import_ray()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    started = _connect(ray, options)
    try:
        with raise_on_signals():  # after ray.init, which sets a SIGTERM handler of its own
            try:
                check_cluster(ray, options, out, token)
                _run_all(ray, runs, options, record, on_batch)
            finally:
                if started:
                    ray.shutdown()
    finally:
        if main and started and previous is not None:
            signal.signal(signal.SIGTERM, previous)
