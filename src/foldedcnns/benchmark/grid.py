"""What a benchmark times: model entries (tasks, compound baselines, checkpoints) x batch sizes x engines.

:func:`model_entries` turns task names, ``compound/<task>`` and checkpoint files into the models to time;
:func:`grid` lays them out as :class:`Candidate` configurations in the interleaved order the runner
times them in; :func:`parse_names` and :func:`parse_pairs` read the comma-separated lists of backends,
precisions and ``backend:precision`` pairs that bench, tune and the benchmark scripts take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foldedcnns.benchmark.timing import folded_inputs, images_per_call
from foldedcnns.errors import ConfigError
from foldedcnns.models import build_model, get_task, list_models
from foldedcnns.models.registry import COMPOUND_PREFIX, ModelConfig
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.backends import BACKENDS, PRECISIONS
from foldedcnns.runtime.checkpoint import model_from_checkpoint
from foldedcnns.utils.text import did_you_mean

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
MODE_ORDER = {"Original": 0, "Folded": 1, "Compound": 2}
BENCH_FAMILIES = ("game", "noscope")  # the paper's benchmark set


def parse_names(text: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'), each checked against ``known`` (a one-line :class:`ConfigError` naming them)."""
    names = tuple(n for n in text.replace(" ", "").split(",") if n)
    bad = [n for n in names if n not in known]
    if not names or bad:
        hint = did_you_mean(bad[0], known) if len(bad) == 1 else ""
        raise ConfigError(f"unknown {what} {', '.join(bad) or repr(text)}{hint}; use a comma-separated list of "
                          f"{', '.join(known)}")
    return names


def parse_pairs(text: str | None) -> tuple[tuple[str, str], ...]:
    """'compile:fp16,eager:bf16' -> (('compile', 'fp16'), ('eager', 'bf16')), each name checked against the
    registered backends and the precisions (tune's and the headline's ``--exclude``)."""
    pairs = []
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        backend, sep, precision = item.partition(":")
        if not sep:
            raise ConfigError(f"--exclude takes BACKEND:PRECISION pairs such as compile:fp16, got {item!r}")
        pairs.append((parse_names(backend, list(BACKENDS), "backend")[0],
                      parse_names(precision, list(PRECISIONS), "precision")[0]))
    return tuple(pairs)


def default_tasks() -> list[str]:
    """Every game and NoScope task: the one default task list of bench, the headline and the GPU check."""
    return [n for n in list_models(compound=False) if get_task(n).family in BENCH_FAMILIES]



@dataclass(frozen=True)
class ModelEntry:
    """One model to time: what it is and how to build it (weights do not change the timing)."""

    config: ModelConfig
    build: Callable[[], nn.Module] = field(compare=False, repr=False)
    label: str = ""
    trained: bool = False  # a checkpoint's own weights (accuracy means something), not a seeded random init

    @property
    def model(self) -> str:
        """The CSV's Model column: the task name (compound baselines share their task's name)."""
        return self.config.task.name

    @property
    def key(self) -> tuple[str, str, int, float]:
        return (self.config.task.name, self.config.mode, self.config.fold, round(self.config.multiplier, 6))

    @property
    def title(self) -> str:
        return self.label or f"{self.config.name} f={self.config.fold}"


@dataclass(frozen=True)
class Candidate:
    """One configuration: a model at a nominal batch size on one backend and precision."""

    entry: ModelEntry
    backend: str
    precision: str
    batch_size: int

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.entry.key, self.backend, self.precision, self.batch_size)

    @property
    def images(self) -> int:
        return images_per_call(self.batch_size, self.entry.config.fold)

    @property
    def folded_inputs(self) -> int:
        return folded_inputs(self.batch_size, self.entry.config.fold)

    def describe(self) -> str:
        return f"{self.entry.title} {self.backend} {self.precision} B={self.batch_size}"



def _build(task: str | TaskSpec, fold: int, seed: int) -> Callable[[], nn.Module]:
    """A builder of the task's model at ``fold`` with seeded weights (the caller's RNG is left alone)."""

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(task, fold=fold).eval()

    return build


def is_checkpoint(task: str) -> bool:
    """Whether a model argument names a checkpoint file (by its suffix) rather than a task."""
    return Path(task).suffix in CHECKPOINT_SUFFIXES


def checkpoint_entry(path: str | Path) -> ModelEntry:
    """A checkpoint's model (its own fold and multiplier) as a benchmark entry."""
    model, config = model_from_checkpoint(path)
    return ModelEntry(config, lambda: model, label=f"{Path(path).name} f={config.fold}", trained=True)


def model_entries(tasks: Sequence[str], folds: Sequence[int], seed: int = 0) -> list[ModelEntry]:
    """Every model to time: each task at each fold; ``compound/<task>`` adds the compound baseline and
    its task's Original; a checkpoint file adds its own model and its task's Original (fold 1).
    Duplicates are dropped; order is task by task (as given), Original first, then by fold."""
    entries: dict[tuple[str, str, int, float], tuple[int, ModelEntry]] = {}

    def add(order: int, entry: ModelEntry) -> None:
        entries.setdefault(entry.key, (order, entry))

    for order, task in enumerate(tasks):
        if is_checkpoint(task):
            ckpt = checkpoint_entry(task)
            add(order, ckpt)  # first, so a fold-1 checkpoint keeps its own weights
            spec = ckpt.config.task
            add(order, ModelEntry(build_model(spec, init=False).config, _build(spec, 1, seed)))
        elif task.startswith(COMPOUND_PREFIX):
            base = task[len(COMPOUND_PREFIX):]
            add(order, ModelEntry(build_model(base, init=False).config, _build(base, 1, seed)))
            add(order, ModelEntry(build_model(task, init=False).config, _build(task, 1, seed)))
        else:
            for f in folds:
                add(order, ModelEntry(build_model(task, fold=f, init=False).config, _build(task, f, seed)))
    ranked = sorted(entries.values(), key=lambda oe: (oe[0], MODE_ORDER.get(oe[1].config.mode, 9), oe[1].config.fold))
    return [entry for _, entry in ranked]


def grid(entries: Sequence[ModelEntry], batch_sizes: Sequence[int], backends: Sequence[str],
         precisions: Sequence[str]) -> list[Candidate]:
    """All configurations in interleaved order: per task and batch size, per backend and precision,
    the Original then its folded (and compound) models."""
    by_task: dict[str, list[ModelEntry]] = {}
    for entry in entries:
        by_task.setdefault(entry.model, []).append(entry)
    out = []
    for task_entries in by_task.values():
        for batch in batch_sizes:
            for backend in backends:
                for precision in precisions:
                    out += [Candidate(e, backend, precision, batch) for e in task_entries]
    return out
