"""The runs of a sweep and how one of them is carried out, in this process or in a Ray worker.

:func:`plan_sweep` turns a :class:`SweepConfig` into one :class:`SweepRun` per (task, fold, seed),
each checked by :func:`~foldedcnns.training.config.plan_run` before any starts. With ``teacher="fold1"``
each task's fold-1 run comes before the folded runs of its seed and its ``best.pt`` is their
``distill_from``. :func:`execute` trains one run and returns a :class:`RunOutcome`: a failure that a
retry cannot fix (bad data, a bad description) is recorded, not raised, so the other runs go on.
:func:`read_back` gives the outcome of a run an earlier sweep finished, without loading its data.

Every attempt at a run appends two lines to ``OUT/attempts/<task>/fold<f>/seed<s>.jsonl`` (start: time,
host, process; end: status and the epoch it resumed from), which is how the summary counts a run that a
Ray retry or a restarted sweep continued.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from foldedcnns.errors import ConfigError, DataError, FoldedCNNsError, first_line
from foldedcnns.models.registry import get_task
from foldedcnns.runtime.threads import torch_threads
from foldedcnns.training.callbacks import BEST_CHECKPOINT
from foldedcnns.training.config import check_distillation, check_resume
from foldedcnns.training.trainer import CONFIG_JSON, RESULT_JSON, TrainConfig, TrainResult, plan_run, train
from foldedcnns.utils.outputs import describe_os_error

DONE, FAILED, NOT_RUN = "done", "failed", "not run"
TEACHERS = ("fold1",)  # --teacher: each task's fold-1 run (same seed) distils its folded runs
ATTEMPTS_DIR = "attempts"
SWEEP_MARKER = ".foldedcnns-sweep"  # marks OUT as a sweep's own folder (which a restart continues); holds a token
RunKey = tuple[str, int, int]  # (task label, fold, seed)


@dataclass(frozen=True)
class RaySweepOptions:
    """``--ray``: ``address`` is ``"auto"`` or ``HOST:PORT`` of a running cluster (None: a local Ray with
    ``num_cpus`` CPUs, all by default). Each run reserves ``cpus_per_run`` CPUs (its PyTorch threads: that
    number rounded down, at least 1) and ``gpus_per_run`` GPUs (below 1: several runs share a GPU)."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        cpus, gpus = self.cpus_per_run, self.gpus_per_run
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not (math.isfinite(cpus) and cpus > 0):
            raise ConfigError(f"--cpus-per-run must be a number > 0, got {cpus!r}")
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not (math.isfinite(gpus) and gpus >= 0):
            raise ConfigError(f"--gpus-per-run must be a number >= 0, got {gpus!r}")
        if gpus > 1 and gpus != int(gpus):
            raise ConfigError(f"--gpus-per-run must be below 1 (runs share a GPU) or a whole number, got {gpus}")
        if self.num_cpus is not None and (isinstance(self.num_cpus, bool) or not isinstance(self.num_cpus, int)
                                          or self.num_cpus < 1):
            raise ConfigError(f"--ray-cpus must be an integer >= 1, got {self.num_cpus!r}")
        if self.num_cpus is not None and self.address:
            raise ConfigError("--ray-cpus sizes a local Ray; a cluster at --ray-address has its own CPUs: drop one")

    @property
    def threads(self) -> int:
        """PyTorch threads of a run: its CPUs, rounded down, at least 1."""
        return max(1, int(self.cpus_per_run))

    @property
    def device(self) -> str:
        """The device a run trains on in its worker (Ray makes the GPUs it reserved ``cuda:0``, ...)."""
        return "cuda" if self.gpus_per_run > 0 else "cpu"


@dataclass
class SweepConfig:
    """Tasks x folds x seeds to train. ``data`` holds one data folder per task (``DATA/<task>``), or is the data
    folder itself when there is a single task; ``base`` holds :class:`TrainConfig` fields shared by every
    run (epochs, batch_size, lr, recipe, device, ...). ``seeds`` default to ``[base["seed"]]`` (0);
    ``teacher="fold1"`` distils each folded run from its task's fold-1 run of the same seed; ``ray`` runs
    every run as a Ray task (None: one after another in this process)."""

    tasks: Sequence[str]
    folds: Sequence[int]
    data: str | Path
    out: str | Path
    base: dict[str, Any] = field(default_factory=dict)
    seeds: Sequence[int] | None = None
    teacher: str | None = None
    ray: RaySweepOptions | None = None


@dataclass(frozen=True)
class SweepRun:
    """One (task, fold, seed) run: its training config (absolute paths, ``resume=True``), the epochs and model
    it was planned with, where its attempts are logged and the key of its teacher run, if any."""

    task: str
    fold: int
    seed: int
    config: TrainConfig
    epochs: int
    model_config: dict[str, Any]
    attempts_log: Path
    teacher: RunKey | None = None

    @property
    def key(self) -> RunKey:
        return (self.task, self.fold, self.seed)

    @property
    def name(self) -> str:
        return run_name(self.key)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


@dataclass
class RunOutcome:
    """How a run ended: ``status`` :data:`DONE` (with its ``result``), :data:`FAILED` or :data:`NOT_RUN` (with a
    one-line ``error``). ``reused``: read back from an earlier sweep; ``started``/``finished``: wall-clock
    times (``time.time()``) of the attempt that ended it."""

    key: RunKey
    status: str
    result: TrainResult | None = None
    error: str | None = None
    reused: bool = False
    started: float | None = None
    finished: float | None = None


def run_name(key: RunKey) -> str:
    return f"{key[0]} fold {key[1]} seed {key[2]}"


def task_label(task: str) -> str:
    """The name a task's folders use: the task name (``compound/...`` kept), also for a description file."""
    spec = get_task(task)
    return task if task in (spec.name, f"compound/{spec.name}") else spec.name


def data_for_task(root: str | Path, task: str, single: bool) -> Path:
    """``root/<task name>`` if it exists, else ``root`` itself for a one-task sweep."""
    root = Path(root)
    candidate = root / get_task(task).name
    if candidate.exists() and not (root / "train").is_dir():
        return candidate
    if single:
        return root
    raise DataError(f"no data for task {task} under {root}; put each task's data in {root}/<task name>/ "
                    "(e.g. DATA/lol/goldnumber-fraction/train)")


def run_dir_for(out: str | Path, task: str, fold: int, seed: int) -> Path:
    """``OUT/<task>/fold<f>/seed<s>``."""
    return Path(out) / task_label(task) / f"fold{fold}" / f"seed{seed}"


def _unique(values: Sequence[Any], flag: str) -> list[Any]:
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise ConfigError(f"{flag} lists {seen[0]} twice; name each once")
    return list(values)


def _check_request(config: SweepConfig) -> list[int]:
    """The seeds of the sweep, after checking what the request asks for as a whole."""
    if not config.tasks or not config.folds:
        raise ConfigError("a sweep needs at least one task and one fold; pass --tasks and --folds")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"task", "data", "out", "fold", "resume"}
    unknown = sorted(set(config.base) - known)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)} for a sweep")
    seeds = _unique(list(config.seeds) if config.seeds is not None else [int(config.base.get("seed", 0))], "--seeds")
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be integers >= 0, got {seeds!r}")
    _unique(list(config.tasks), "--tasks")
    _unique(list(config.folds), "--folds")
    if config.teacher is not None:
        if config.teacher not in TEACHERS:
            raise ConfigError(f"unknown --teacher {config.teacher!r}; choose {', '.join(TEACHERS)}")
        if 1 not in config.folds:
            raise ConfigError("--teacher fold1 distils from each task's fold-1 run; add 1 to --folds")
        if config.base.get("distill_from") is not None:
            raise ConfigError("--teacher fold1 and --distill-from both name a teacher; pass one of them")
    if config.ray is not None:
        device = str(config.base.get("device", "auto"))
        if device.startswith("cuda") and config.ray.gpus_per_run == 0:
            raise ConfigError(f"--device {device} on Ray needs GPUs reserved for every run; pass --gpus-per-run "
                              "(e.g. 0.25 lets four runs share a GPU)")
        if device == "cpu" and config.ray.gpus_per_run > 0:
            raise ConfigError("--gpus-per-run reserves GPUs that --device cpu would leave idle; drop one of them")
    return seeds


def plan_sweep(config: SweepConfig) -> list[SweepRun]:
    """Every run of the sweep, checked, in the order they start locally (a teacher before its students)."""
    seeds = _check_request(config)
    folds = list(config.folds)
    if config.teacher is not None:
        folds = [1, *(f for f in folds if f != 1)]
    out = Path(config.out).absolute()
    base = {k: v for k, v in config.base.items() if k != "seed"}
    if base.get("distill_from") is not None:
        base["distill_from"] = Path(base["distill_from"]).absolute()
    single = len(config.tasks) == 1
    runs: list[SweepRun] = []
    labels: dict[str, str] = {}
    for task in config.tasks:
        label = task_label(task)
        if labels.setdefault(label, task) != task:
            raise ConfigError(f"tasks {labels[label]} and {task} are both named {label}; rename one description")
        task_arg = str(Path(task).absolute()) if os.path.isfile(task) else task  # workers may start elsewhere
        data = data_for_task(config.data, task, single).absolute()
        for fold in folds:
            for seed in seeds:
                teacher = (label, 1, seed) if config.teacher is not None and fold != 1 else None
                distill = base.get("distill_from") if teacher is None else \
                    out / label / "fold1" / f"seed{seed}" / BEST_CHECKPOINT
                run = TrainConfig(task=task_arg, data=data, out=out / label / f"fold{fold}" / f"seed{seed}",
                                  fold=fold, resume=True, seed=seed, **{**base, "distill_from": distill})
                plan = plan_run(_checkable(run, config.ray, teacher is not None))
                if teacher is not None:
                    check_distillation(run, teacher_ready=False)
                runs.append(SweepRun(label, fold, seed, run, plan.recipe.epochs, plan.model_config.to_dict(),
                                     out / ATTEMPTS_DIR / label / f"fold{fold}" / f"seed{seed}.jsonl", teacher))
    return runs


def _checkable(run: TrainConfig, cluster: RaySweepOptions | None, untrained_teacher: bool) -> TrainConfig:
    """``run`` as this process can plan it: a teacher not trained yet is left out (checked apart), and on Ray
    the GPUs are the workers' (the device and mixed precision are checked there)."""
    if untrained_teacher:
        run = replace(run, distill_from=None)
    if cluster is not None and cluster.gpus_per_run > 0:
        run = replace(run, device="cpu", amp=None)
    return run


def adopt_legacy_run(run: SweepRun) -> None:
    """Move a run of the earlier layout (``OUT/<task>/fold<f>/`` without seed folders) into ``seed<s>/`` when
    it was trained with this run's seed, so that a restarted old sweep continues it instead of starting over."""
    old = run.run_dir.parent
    if os.path.lexists(run.run_dir) or not (old / CONFIG_JSON).is_file():
        return
    try:
        seed = json.loads((old / CONFIG_JSON).read_text(encoding="utf-8")).get("seed")
    except (OSError, ValueError, AttributeError):
        return
    if seed != run.seed:
        return
    run.run_dir.mkdir()
    for item in list(old.iterdir()):
        if not (item.is_dir() and item.name.startswith("seed")):
            item.rename(run.run_dir / item.name)


def read_back(run: SweepRun) -> RunOutcome | None:
    """The outcome of ``run`` when an earlier sweep finished it with the same settings (``result.json`` with
    every planned epoch); None when it still has to be trained or continued."""
    path = run.run_dir / RESULT_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("epochs") != run.epochs:
            return None
        check_resume(data.get("settings") or {}, plan_run(replace(run.config, device="cpu", amp=None)).settings(),
                     run.run_dir)
        result = TrainResult.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, FoldedCNNsError):
        return None
    result = replace(result, run_dir=run.run_dir, best_checkpoint=run.run_dir / BEST_CHECKPOINT,
                     last_checkpoint=run.run_dir / Path(result.last_checkpoint).name)
    return RunOutcome(run.key, DONE, result=result, reused=True)


def describe_failure(exc: BaseException) -> str:
    """One line for a run that failed: the message of an error the user can fix, else its type and first line."""
    if isinstance(exc, FoldedCNNsError):
        text = str(exc)
    elif isinstance(exc, OSError):
        text = describe_os_error(exc, action="use")
    elif isinstance(exc, MemoryError):
        text = f"out of memory ({first_line(exc)}); use smaller sizes (batch size, image size, model widths)"
    else:
        text = f"{type(exc).__name__}: {first_line(exc)}"
    return " ".join(text.split())


def log_attempt(run: SweepRun, event: dict[str, Any]) -> None:
    """Append one event of an attempt at ``run`` to its attempts log (shared by every node on a cluster)."""
    run.attempts_log.parent.mkdir(parents=True, exist_ok=True)
    with open(run.attempts_log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(event) + "\n")


def read_attempts(run: SweepRun) -> list[dict[str, Any]]:
    """The events of every attempt at ``run`` so far (an unreadable line is skipped)."""
    try:
        lines = run.attempts_log.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def teacher_missing(run: SweepRun, teacher: RunOutcome | None) -> RunOutcome | None:
    """The :data:`NOT_RUN` outcome of a student whose teacher did not finish, else None."""
    if run.teacher is None or (teacher is not None and teacher.status == DONE):
        return None
    why = "did not finish" if teacher is None else f"{teacher.status}: {teacher.error}"
    return RunOutcome(run.key, NOT_RUN, error=f"its teacher ({run_name(run.teacher)}) {why}")


def execute(run: SweepRun, teacher: RunOutcome | None = None, placement: RaySweepOptions | None = None,
            on_batch: Callable[[SweepRun, int, int], None] | None = None) -> RunOutcome:
    """Train ``run`` (resuming its ``last.pt``) and return how it ended; an error becomes a :data:`FAILED`
    outcome with its one-line message. ``teacher``: the outcome of its teacher run (a student whose teacher
    did not finish is :data:`NOT_RUN`). ``placement``: the Ray resources of a worker (its threads and device).
    ``on_batch(run, epoch, step)`` runs after every optimiser step."""
    skipped = teacher_missing(run, teacher)
    if skipped is not None:
        return skipped
    started = time.time()
    log_attempt(run, {"event": "start", "time": started, "host": socket.gethostname(), "pid": os.getpid()})
    config = run.config if placement is None else replace(run.config, device=placement.device, progress=False)
    hook = None if on_batch is None else (lambda epoch, step: on_batch(run, epoch, step))
    try:
        with torch_threads(None if placement is None else placement.threads):
            result = train(config, on_batch=hook)
    except Exception as exc:
        outcome = RunOutcome(run.key, FAILED, error=describe_failure(exc), started=started, finished=time.time())
    else:
        outcome = RunOutcome(run.key, DONE, result=result, started=started, finished=time.time())
    log_attempt(run, {"event": "end", "time": outcome.finished, "status": outcome.status, "error": outcome.error,
                      "resumed_from": None if outcome.result is None else outcome.result.resumed_from})
    return outcome
