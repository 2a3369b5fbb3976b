"""Train one (task, fold) run, and evaluate a checkpoint: the training package's entry points.

``train(TrainConfig(...)) -> TrainResult``: :func:`plan_run` checks the settings, the data is
loaded, :class:`foldedcnns.training.loop.TrainLoop` trains (folding in the loop, every image
counted once), and the run directory gets (atomically) ``config.json``, per epoch ``metrics.csv``,
``metrics.json``, ``best.pt`` when validation Top-1 improved and ``last.pt`` with optimiser,
scheduler, AMP scaler, curriculum and RNG state, and at the end ``result.json``. A killed run
resumed with ``resume=True`` loses at most the epoch it was in.

The pieces live in :mod:`~foldedcnns.training.config` (TrainConfig, RunPlan, plan_run),
:mod:`~foldedcnns.training.loop`, :mod:`~foldedcnns.training.callbacks` and
:mod:`~foldedcnns.training.evaluation` (evaluate); they are re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from foldedcnns.errors import ConfigError
from foldedcnns.runtime.checkpoint import load_checkpoint
from foldedcnns.training.callbacks import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    BatchHook,
    Callback,
    Checkpoints,
    MetricsFiles,
    ProgressBar,
)
from foldedcnns.training.config import RunPlan, TrainConfig, check_resume, plan_run
from foldedcnns.training.evaluation import DEFAULT_EVAL_BATCH, evaluate
from foldedcnns.training.loop import TrainLoop, flush_denormals
from foldedcnns.training.splits import load_training_data
from foldedcnns.utils.atomic import atomic_write_text
from foldedcnns.utils.outputs import claim_folder
from foldedcnns.utils.signals import on_interrupt
from foldedcnns.utils.text import json_safe

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
RESULT_JSON = "result.json"

__all__ = ["DEFAULT_EVAL_BATCH", "RunPlan", "TrainConfig", "TrainResult", "evaluate", "plan_run", "train"]


@dataclass
class TrainResult:
    """What a run produced: the best epoch's validation and test metrics, history and file paths."""

    run_dir: Path
    task: str
    fold: int
    multiplier: float
    epochs: int
    best_epoch: int
    best: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]]
    best_checkpoint: Path
    last_checkpoint: Path
    seconds: float
    resumed_from: int | None = None
    teacher: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def test_top1(self) -> float:
        return float(self.best.get("test_top1", math.nan))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("run_dir", "best_checkpoint", "last_checkpoint"):
            data[key] = str(data[key])
        return json_safe(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """A result read back from what :meth:`to_dict` wrote (``result.json``)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for key in ("run_dir", "best_checkpoint", "last_checkpoint"):
            values[key] = Path(values[key])
        return cls(**values)


def interrupt_note(run_dir: Path, created: bool, resume: bool) -> str:
    """What a run stopped by Ctrl-C or SIGTERM keeps: its finished epochs (resumable), or nothing (a
    folder this run made is removed)."""
    if (run_dir / LAST_CHECKPOINT).is_file():
        how = "run the same command again" if resume else "run the same command with --resume"
        return f"{run_dir} keeps the finished epochs ({LAST_CHECKPOINT}); {how} to continue"
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return f"no epoch had finished; {run_dir} was removed"
    return f"no epoch had finished; {run_dir} holds nothing to resume"


def train(config: TrainConfig, *, on_batch: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train one (task, fold) run; see the module docstring. ``on_batch(epoch, step)`` runs after each step."""
    plan = plan_run(config)
    run_dir = claim_folder(config.out, (LAST_CHECKPOINT, CONFIG_JSON), owner="an earlier training run")
    last_path = run_dir / LAST_CHECKPOINT
    resume_ckpt = None
    if last_path.exists():
        if not config.resume:
            raise ConfigError(f"{run_dir} already holds a run ({LAST_CHECKPOINT}); pass --resume to continue it "
                              "or choose another --out")
        resume_ckpt = load_checkpoint(last_path)
        check_resume(resume_ckpt.get("train_config", {}), plan.settings(), run_dir)
    elif config.resume:
        log.info("no %s in %s; starting a new run", LAST_CHECKPOINT, run_dir)

    data = load_training_data(config.data, plan.spec, plan.model_config.image_size, plan.recipe.val_split,
                              progress=None if config.progress else False)
    callbacks: list[Callback] = [ProgressBar(config.progress)]
    if on_batch is not None:
        callbacks.append(BatchHook(on_batch))
    callbacks += [MetricsFiles(run_dir), Checkpoints(run_dir)]
    created = not run_dir.exists()
    with flush_denormals(plan.device.type == "cpu"), \
            on_interrupt(lambda: interrupt_note(run_dir, created, config.resume)):
        loop = TrainLoop(plan, data, run_dir, resume_ckpt, callbacks)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_JSON, json.dumps(json_safe(plan.settings()), indent=1) + "\n")
        history = [m.to_row() for m in loop.fit()]
    best = loop.best.to_row()
    result = TrainResult(
        run_dir=run_dir, task=plan.model_name, fold=plan.fold, multiplier=plan.model_config.multiplier,
        epochs=len(history), best_epoch=int(best["epoch"]), best=best, final=dict(history[-1]), history=history,
        best_checkpoint=run_dir / BEST_CHECKPOINT, last_checkpoint=run_dir / LAST_CHECKPOINT,
        seconds=sum(r["seconds"] for r in history), resumed_from=loop.resumed_from, teacher=loop.teacher_info,
        settings=plan.settings())
    atomic_write_text(run_dir / RESULT_JSON, json.dumps(result.to_dict(), indent=1) + "\n")
    return result
