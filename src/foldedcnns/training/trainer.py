"""The trainer of one (task, fold) run, and evaluation of a checkpoint.

``train(TrainConfig(...)) -> TrainResult``. Images are held in memory as uint8 tensors on the
device. Every epoch the training images (of the classes the curriculum has introduced) are shuffled
with a seeded generator and cut into batches of B images, B a multiple of f; each batch is folded
into B/f inputs of f*C channels, the model's (B/f, f*K) output is unfolded into (B, K) per-image
logits, and loss and accuracy are computed per image. The last partial batch is padded to a multiple
of f with repeated images that are masked out of the loss and the metrics, so every image counts
once. Validation and test cover every image exactly once, on all classes.

After each epoch the run directory gets (atomically) ``metrics.csv``, ``metrics.json``, ``best.pt``
when validation Top-1 improved, and ``last.pt`` with optimiser, scheduler, AMP scaler, curriculum
and RNG state: a killed run resumed with ``resume=True`` loses at most the epoch it was in.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from foldedcnns.core.folding import fold, pad_to_multiple, unfold_logits
from foldedcnns.errors import ConfigError
from foldedcnns.models.registry import ModelConfig, build_model, get_task
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint
from foldedcnns.runtime.device import resolve_device
from foldedcnns.training.curriculum import CurriculumSchedule, curriculum_schedule
from foldedcnns.training.distill import DEFAULT_TEMPERATURE, DISTILL_LOSSES, cached_teacher_logits, distill_loss
from foldedcnns.training.metrics import MetricAccumulator, format_progress, topk_correct
from foldedcnns.training.recipes import Recipe, apply_overrides, fold_batch_size, recipe_for
from foldedcnns.training.rng import get_rng_state, seed_everything, set_rng_state
from foldedcnns.training.slots import SlotWarmup
from foldedcnns.training.splits import SplitData, TrainingData, load_split, load_training_data
from foldedcnns.utils.atomic import atomic_open, atomic_write_text

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
CONFIG_JSON = "config.json"
RESULT_JSON = "result.json"
DEFAULT_EVAL_BATCH = 512
PROGRESS_EVERY = 10  # batches between progress-bar refreshes (each one syncs the device)
PROGRESS_SECONDS = 0.5  # least time between two progress-bar redraws
PIXEL_MAX = 255.0
EVAL_ORDER_SEED = 19  # the original's seed for shuffling validation and test images before folding
# Settings that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("epochs",)

BatchHook = Callable[[int, int], None]


@dataclass
class TrainConfig:
    """One training run. ``None`` fields take the recipe's value (see :mod:`foldedcnns.training.recipes`).

    ``task`` is a task name (``foldedcnns models``) or a description JSON path; ``data`` an image
    folder with train/val/test (or a CIFAR archive); ``out`` the run directory. ``batch_size`` is in
    images and is rounded down to a multiple of ``fold``. ``device`` is ``auto``, ``cpu`` or ``cuda``;
    ``amp`` (mixed precision) defaults to on for CUDA. ``curriculum_gap`` (epochs between class steps)
    lets short runs use the curriculum.
    """

    task: str
    data: str | Path
    out: str | Path
    fold: int = 1
    multiplier: float | None = None
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None
    lr_schedule: str | None = None
    curriculum: bool | None = None
    curriculum_gap: int | None = None
    slot_warmup: int | None = None
    distill_from: str | Path | None = None
    distill_loss: str = "mse"
    distill_temperature: float = DEFAULT_TEMPERATURE
    distill_weight: float = 1.0
    device: str = "auto"
    amp: bool | None = None
    resume: bool = False
    seed: int = 0
    eval_batch_size: int = DEFAULT_EVAL_BATCH
    progress: bool = True
    channels_last: bool = True


@dataclass(frozen=True)
class RunPlan:
    """A :class:`TrainConfig` resolved against the task and its recipe; everything checked."""

    config: TrainConfig
    model_name: str
    model_config: ModelConfig
    recipe: Recipe
    batch_size: int
    curriculum: CurriculumSchedule | None
    device: torch.device
    amp: bool

    @property
    def spec(self) -> TaskSpec:
        return self.model_config.task

    @property
    def fold(self) -> int:
        return self.model_config.fold

    def settings(self) -> dict[str, Any]:
        """What defines the run (stored in checkpoints and config.json; compared on resume)."""
        return {"task": self.model_name, "model_config": self.model_config.to_dict(),
                "recipe": self.recipe.to_dict(), "batch_size": self.batch_size,
                "curriculum": None if self.curriculum is None else self.curriculum.to_dict(),
                "distill_from": None if self.config.distill_from is None else str(self.config.distill_from),
                "distill_loss": self.config.distill_loss if self.config.distill_from else None,
                "distill_temperature": self.config.distill_temperature
                if self.config.distill_from and self.config.distill_loss == "kl" else None,
                "distill_weight": self.config.distill_weight if self.config.distill_from else None,
                "seed": self.config.seed, "data": str(self.config.data)}


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


def plan_run(config: TrainConfig) -> RunPlan:
    """Resolve and check a run's settings before any data is read or any training starts."""
    spec = get_task(config.task)
    model_name = str(config.task) if not str(config.task).endswith(".json") else spec.name
    probe = build_model(config.task, fold=config.fold, multiplier=config.multiplier, init=False)
    model_config: ModelConfig = probe.config
    recipe = recipe_for(spec, model_config.fold, config.recipe)
    recipe = apply_overrides(recipe, {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                                      "weight_decay": config.weight_decay, "optimizer": config.optimizer,
                                      "lr_schedule": config.lr_schedule, "curriculum": config.curriculum,
                                      "curriculum_gap": config.curriculum_gap, "slot_warmup": config.slot_warmup})
    batch_size = fold_batch_size(recipe.batch_size, model_config.fold)
    try:
        SlotWarmup(probe, model_config.fold, recipe.slot_warmup)  # checks that every layer can be split
    except ConfigError:
        if config.slot_warmup is not None:
            raise
        log.info("slot warm-up is off: a layer of this model has fewer than %d channels", model_config.fold)
        recipe = apply_overrides(recipe, {"slot_warmup": 0})
    if config.eval_batch_size < 1:
        raise ConfigError(f"eval batch size must be >= 1, got {config.eval_batch_size}")
    schedule = None
    if (recipe.curriculum and model_config.fold > 1) or config.curriculum:
        schedule = curriculum_schedule(spec.num_classes, model_config.fold, divisor=recipe.curriculum_divisor,
                                       gap=recipe.curriculum_gap)
        if schedule.complete_epoch >= recipe.epochs:
            raise ConfigError(
                f"the curriculum adds the last of {spec.num_classes} classes only in epoch "
                f"{schedule.complete_epoch + 1} but the run has {recipe.epochs} epochs; pass a smaller "
                f"--curriculum-gap (at most {max(1, _largest_gap(schedule, recipe.epochs))}), more --epochs, "
                "or --no-curriculum")
    if config.distill_from is not None:
        if config.distill_loss not in DISTILL_LOSSES:
            raise ConfigError(f"unknown distillation loss {config.distill_loss!r}; choose one of "
                              f"{', '.join(DISTILL_LOSSES)}")
        if not 0.0 <= config.distill_weight <= 1.0:
            raise ConfigError(f"distillation weight must be in [0, 1], got {config.distill_weight}; "
                              "1 trains on the teacher's logits only (the original), 0 on the labels only")
        if not Path(config.distill_from).is_file():
            raise ConfigError(f"teacher checkpoint {config.distill_from} does not exist; pass --distill-from with "
                              "a checkpoint written by 'foldedcnns train'")
    device = resolve_device(config.device)
    amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    if amp and device.type != "cuda":
        raise ConfigError("mixed precision (--amp) needs a CUDA device; pass --device cuda or drop --amp")
    return RunPlan(config, model_name, model_config, recipe, batch_size, schedule, device, amp)


def _largest_gap(schedule: CurriculumSchedule, epochs: int) -> int:
    steps = -(-max(0, schedule.num_classes - schedule.initial) // schedule.step)
    return (epochs - 1) // steps if steps else epochs


class Preprocess:
    """uint8 (N, C, H, W) on the device -> float inputs: scale to [0, 1], augment (train), normalise."""

    def __init__(self, spec: TaskSpec, image_size: tuple[int, int, int], augment: str = "none",
                 crop_padding: int = 0, generator: torch.Generator | None = None) -> None:
        self.mean = spec.mean
        self.std = spec.std
        self.size = image_size[1:]
        self.augment = augment
        self.crop_padding = crop_padding
        self.generator = generator

    def __call__(self, images: torch.Tensor, train: bool = False) -> torch.Tensor:
        from foldedcnns.data import transforms

        x = transforms.to_float(images)
        if train and self.augment == "crop_flip":
            x = transforms.random_crop(x, self.size, self.crop_padding, self.generator)
            x = transforms.random_hflip(x, self.generator)
        if self.mean is not None:
            x = transforms.normalize(x, self.mean, self.std)
        return x


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """NHWC strides for a folded batch when ``channels_last`` (2-3x faster convolutions on CPU here)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum)
    return torch.optim.SGD(params, lr=recipe.lr, weight_decay=recipe.weight_decay, momentum=recipe.momentum)


def _make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LRScheduler | None:
    if recipe.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.lr_step_size, gamma=recipe.lr_gamma)
    if recipe.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    return None


@dataclass
class EvalOutputs:
    """Per-image results of one pass over a split: loss, Top-1 and Top-5 hits, labels (all (N,))."""

    loss: torch.Tensor
    hit1: torch.Tensor
    hit5: torch.Tensor
    labels: torch.Tensor

    def summary(self, mask: torch.Tensor | None = None) -> dict[str, float | int]:
        loss, hit1, hit5 = (self.loss, self.hit1, self.hit5) if mask is None else \
            (self.loss[mask], self.hit1[mask], self.hit5[mask])
        n = int(loss.numel())
        if n == 0:
            return {"top1": math.nan, "top5": math.nan, "loss": math.nan, "images": 0}
        return {"top1": 100.0 * hit1.double().mean().item(), "top5": 100.0 * hit5.double().mean().item(),
                "loss": loss.double().mean().item(), "images": n}


@torch.inference_mode()
def evaluate_split(model: nn.Module, fold_factor: int, split: SplitData, preprocess: Preprocess,
                   device: torch.device, *, batch_size: int = DEFAULT_EVAL_BATCH, amp: bool = False,
                   desc: str | None = None, progress: bool = False, channels_last: bool = False) -> EvalOutputs:
    """Run a (folded) model over every image of ``split`` exactly once; padded images are dropped."""
    model.eval()
    batch_size = max(fold_factor, batch_size - batch_size % fold_factor)
    losses, hits1, hits5 = [], [], []
    n = len(split)
    # Image folders list images class by class; folding them in that order would put f images of the same
    # class into one input, unlike training and deployment. A fixed shuffle (the original's seed 19) mixes
    # them; per-image results are put back in the split's order.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(EVAL_ORDER_SEED)) if fold_factor > 1 \
        else torch.arange(n)
    images, labels = split.images[order].to(device), split.labels[order].to(device)
    acc = MetricAccumulator(device)
    bar = tqdm(total=-(-n // batch_size), desc=desc, file=sys.stderr, disable=not progress or n == 0,
               leave=True, dynamic_ncols=True, mininterval=PROGRESS_SECONDS)
    for step, start in enumerate(range(0, n, batch_size)):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        real = x.shape[0]
        x, _ = pad_to_multiple(preprocess(x), fold_factor)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(to_memory_format(fold(x, fold_factor), channels_last))
        logits = unfold_logits(out, fold_factor)[:real].float()
        loss = F.cross_entropy(logits, y, reduction="none")
        losses.append(loss)
        hits1.append(topk_correct(logits, y, 1))
        hits5.append(topk_correct(logits, y, 5))
        if progress:
            acc.add(loss, logits, y)
            bar.update(1)
            if desc and (step % PROGRESS_EVERY == 0 or start + batch_size >= n):
                bar.set_description(format_progress_desc(desc, acc.summary()))
    bar.close()
    if not losses:
        empty = torch.zeros(0, device="cpu")
        return EvalOutputs(empty, empty.bool(), empty.bool(), split.labels.cpu())
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    return EvalOutputs(torch.cat(losses).cpu()[inverse], torch.cat(hits1).cpu()[inverse],
                       torch.cat(hits5).cpu()[inverse], split.labels.cpu())


def format_progress_desc(desc: str, summary: dict[str, float | int]) -> str:
    """``desc`` is ``"Epoch 3. val"``; the result is the original's progress line."""
    epoch_part, _, split = desc.partition(". ")
    return format_progress(int(epoch_part.split()[-1]), split, summary)


def json_safe(value: Any) -> Any:
    """NaN/inf become None (JSON has no NaN); containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


METRIC_COLUMNS = ("epoch", "classes", "lr", "seconds",
                  "train_top1", "train_top5", "train_loss", "train_images",
                  "val_top1", "val_top5", "val_loss", "val_images", "val_top1_seen",
                  "test_top1", "test_top5", "test_loss", "test_images")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.csv and metrics.json from the whole history (atomic; idempotent on resume)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: "" if isinstance(v, float) and not math.isfinite(v) else
                         (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(run_dir / METRICS_CSV, buffer.getvalue())
    with atomic_open(run_dir / METRICS_JSON, "w", encoding="utf-8") as handle:
        json.dump(json_safe(history), handle, indent=1)


def _preprocessing_info(config: ModelConfig) -> dict[str, Any]:
    spec = config.task
    return {"image_size": list(config.image_size), "scale": 1.0 / PIXEL_MAX,
            "mean": None if spec.mean is None else list(spec.mean),
            "std": None if spec.std is None else list(spec.std)}


def _check_resume(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    for key, value in current.items():
        old = saved.get(key)
        if key == "recipe":
            old = {k: v for k, v in (old or {}).items() if k not in RESUMABLE_CHANGES}
            value = {k: v for k, v in value.items() if k not in RESUMABLE_CHANGES}
        if key == "data":
            continue
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
            raise ConfigError(f"{run_dir} was trained with a different {key}; resume with the same options "
                              "(only --epochs may change) or choose another --out")


def _better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher validation Top-1 wins; equal Top-1 is broken by lower validation loss."""
    if best is None:
        return True
    if row["val_top1"] != best["val_top1"]:
        return row["val_top1"] > best["val_top1"]
    return row["val_loss"] < best["val_loss"]


def train(config: TrainConfig, *, on_batch: BatchHook | None = None) -> TrainResult:
    """Train one (task, fold) run; see the module docstring. ``on_batch(epoch, step)`` runs after each step."""
    plan = plan_run(config)
    run_dir = Path(config.out)
    last_path = run_dir / LAST_CHECKPOINT
    resume_ckpt = None
    if last_path.exists():
        if not config.resume:
            raise ConfigError(f"{run_dir} already holds a run ({LAST_CHECKPOINT}); pass --resume to continue it "
                              "or choose another --out")
        resume_ckpt = load_checkpoint(last_path)
        _check_resume(resume_ckpt.get("train_config", {}), plan.settings(), run_dir)
    elif config.resume:
        log.info("no %s in %s; starting a new run", LAST_CHECKPOINT, run_dir)

    data = load_training_data(config.data, plan.spec, plan.model_config.image_size, plan.recipe.val_split,
                              progress=None if config.progress else False)
    with flush_denormals(plan.device.type == "cpu"):
        return _Trainer(plan, data, run_dir, resume_ckpt, on_batch).run()


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Treat denormal floats as zero on the CPU while the block runs (restored after).

    Small ReLU CNNs produce many denormal activations and gradients late in training; on x86 each
    costs a slow microcode path (measured: 1.2-1.5x slower steps on the game CNNs). Results change
    only below 1e-38.
    """
    if not enabled or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class _Trainer:
    def __init__(self, plan: RunPlan, data: TrainingData, run_dir: Path, resume: dict[str, Any] | None,
                 on_batch: BatchHook | None) -> None:
        self.plan, self.data, self.run_dir, self.on_batch = plan, data, run_dir, on_batch
        self.device, self.fold = plan.device, plan.fold
        seed_everything(plan.config.seed)
        self.model = build_model(plan.config.task, fold=plan.fold, multiplier=plan.config.multiplier, init=True)
        self.model.to(self.device)
        self.slots = SlotWarmup(self.model, plan.fold, plan.recipe.slot_warmup)
        self.slots.separate()
        if plan.config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(plan.config.seed)
        self.preprocess = Preprocess(plan.spec, plan.model_config.image_size, plan.recipe.augment,
                                     plan.recipe.crop_padding, self.generator)
        self.optimizer = _make_optimizer(self.model, plan.recipe)
        self.scheduler = _make_scheduler(self.optimizer, plan.recipe)
        self.scaler = torch.amp.GradScaler("cuda", enabled=plan.amp)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.start_epoch = 0
        self.resumed_from: int | None = None
        self.teacher_info: dict[str, Any] | None = None
        self.teacher_logits: torch.Tensor | None = None
        self.train_images = data.train.images.to(self.device)
        self.train_labels = data.train.labels.to(self.device)
        if resume is not None:
            self._restore(resume)
        if plan.config.distill_from is not None:
            self._load_teacher()

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["state_dict"])
        state = ckpt["train_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.best = state.get("best")
        self.start_epoch = int(ckpt["epoch"])
        self.resumed_from = self.start_epoch
        set_rng_state(state["rng"])
        self.generator.set_state(state["data_rng"])

    def _load_teacher(self) -> None:
        cfg = self.plan.config
        plain = Preprocess(self.plan.spec, self.plan.model_config.image_size)
        logits, info = cached_teacher_logits(self.run_dir, cfg.distill_from, self.plan.model_config,
                                             self.data.train.images, plain, self.device, cfg.eval_batch_size)
        top1 = 100.0 * (logits.argmax(1) == self.data.train.labels).double().mean().item()
        self.teacher_info = {**info, "loss": cfg.distill_loss, "train_top1": top1,
                             "temperature": cfg.distill_temperature if cfg.distill_loss == "kl" else None}
        self.teacher_logits = logits.to(self.device)

    # -- one epoch --------------------------------------------------------------------------------

    def _train_epoch(self, epoch: int, active: int) -> dict[str, float | int]:
        model, f, plan = self.model, self.fold, self.plan
        model.train()
        labels_cpu = self.data.train.labels
        candidates = torch.nonzero(labels_cpu < active).flatten() if active < plan.spec.num_classes \
            else torch.arange(labels_cpu.shape[0])
        order = candidates[torch.randperm(candidates.shape[0], generator=self.generator)].to(self.device)
        n, batch = order.shape[0], plan.batch_size
        acc = MetricAccumulator(self.device)
        desc = f"Epoch {epoch + 1}. train"
        bar = tqdm(total=-(-n // batch), desc=desc, file=sys.stderr, disable=not plan.config.progress, leave=True,
                   dynamic_ncols=True, mininterval=PROGRESS_SECONDS)
        for step, start in enumerate(range(0, n, batch)):
            index = order[start:start + batch]
            real = index.shape[0]
            index, pad = pad_to_multiple(index, f)
            weight = torch.ones(index.shape[0], device=self.device)
            if pad:
                weight[real:] = 0.0
            x = self.preprocess(self.train_images[index], train=True)
            y = self.train_labels[index]
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=plan.amp):
                out = model(to_memory_format(fold(x, f), plan.config.channels_last))
            logits = unfold_logits(out, f).float()
            per_image = self._loss(logits, y, index)
            loss = (per_image * weight).sum() / weight.sum()
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            with self.slots.blend(epoch, (start + real) / n):
                self.scaler.step(self.optimizer)
            self.scaler.update()
            acc.add(per_image, logits, y, weight)
            bar.update(1)
            if plan.config.progress and (step % PROGRESS_EVERY == 0 or start + batch >= n):
                bar.set_description(format_progress(epoch + 1, "train", acc.summary()))
            if self.on_batch is not None:
                self.on_batch(epoch + 1, step)
        bar.close()
        return acc.summary()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Per-image loss (N,): cross-entropy, the distillation loss, or ``w * distill + (1 - w) * CE``."""
        cfg = self.plan.config
        if self.teacher_logits is None:
            return F.cross_entropy(logits, labels, reduction="none")
        soft = distill_loss(logits, self.teacher_logits[index], cfg.distill_loss, cfg.distill_temperature)
        if cfg.distill_weight >= 1.0:
            return soft
        hard = F.cross_entropy(logits, labels, reduction="none")
        return cfg.distill_weight * soft + (1.0 - cfg.distill_weight) * hard

    def _eval(self, split: SplitData, epoch: int, name: str) -> EvalOutputs:
        plan = self.plan
        return evaluate_split(self.model, self.fold, split, self.preprocess, self.device,
                              batch_size=plan.config.eval_batch_size, amp=plan.amp, desc=f"Epoch {epoch + 1}. {name}",
                              progress=plan.config.progress, channels_last=plan.config.channels_last)

    def _checkpoint(self, epoch: int, row: dict[str, Any], full: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {"epoch": epoch, "metrics": row, "task": self.plan.model_name,
                                  "preprocessing": _preprocessing_info(self.plan.model_config),
                                  "train_config": self.plan.settings()}
        if full:
            fields["train_state"] = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.plan.amp else None,
                "curriculum": {"epoch": epoch, "classes": row["classes"]},
                "rng": get_rng_state(), "data_rng": self.generator.get_state(),
                "best": self.best, "history": self.history,
            }
        return make_checkpoint(self.model, self.plan.model_config, **fields)

    def run(self) -> TrainResult:
        plan, run_dir = self.plan, self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / CONFIG_JSON, json.dumps(json_safe(plan.settings()), indent=1) + "\n")
        epochs = plan.recipe.epochs
        for epoch in range(self.start_epoch, epochs):
            started = time.perf_counter()
            active = plan.curriculum.classes_at(epoch) if plan.curriculum else plan.spec.num_classes
            self.slots.begin_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            train_m = self._train_epoch(epoch, active)
            val_out = self._eval(self.data.val, epoch, "val")
            test_out = self._eval(self.data.test, epoch, "test") if self.data.test is not None else None
            if self.scheduler is not None:
                self.scheduler.step()
            row: dict[str, Any] = {"epoch": epoch + 1, "classes": active, "lr": lr}
            row.update({f"train_{k}": v for k, v in train_m.items()})
            row.update({f"val_{k}": v for k, v in val_out.summary().items()})
            row["val_top1_seen"] = val_out.summary(val_out.labels < active)["top1"]
            test_m = test_out.summary() if test_out is not None else \
                {"top1": math.nan, "top5": math.nan, "loss": math.nan, "images": 0}
            row.update({f"test_{k}": v for k, v in test_m.items()})
            row["seconds"] = time.perf_counter() - started
            self.history.append(row)
            write_metrics(run_dir, self.history)
            if _better(row, self.best):
                self.best = dict(row)
                save_checkpoint(run_dir / BEST_CHECKPOINT, self._checkpoint(epoch + 1, row, full=False))
            save_checkpoint(run_dir / LAST_CHECKPOINT, self._checkpoint(epoch + 1, row, full=True))
        if not self.history:
            raise ConfigError(f"{run_dir} has no finished epoch; pass --epochs >= 1")
        write_metrics(run_dir, self.history)
        result = TrainResult(
            run_dir=run_dir, task=plan.model_name, fold=plan.fold, multiplier=plan.model_config.multiplier,
            epochs=len(self.history), best_epoch=int(self.best["epoch"]), best=dict(self.best),
            final=dict(self.history[-1]), history=self.history, best_checkpoint=run_dir / BEST_CHECKPOINT,
            last_checkpoint=run_dir / LAST_CHECKPOINT, seconds=sum(r["seconds"] for r in self.history),
            resumed_from=self.resumed_from, teacher=self.teacher_info, settings=plan.settings())
        atomic_write_text(run_dir / RESULT_JSON, json.dumps(result.to_dict(), indent=1) + "\n")
        return result


def evaluate(checkpoint: str | Path, data: str | Path, split: str = "test", *, device: str = "auto",
             batch_size: int = DEFAULT_EVAL_BATCH, amp: bool | None = None, progress: bool = False) -> dict[str, Any]:
    """Top-1, Top-5 (percent), mean cross-entropy and image count of a checkpoint on one split.

    Everything needed (task, classes, fold, input size, normalisation, validation split) comes from
    the checkpoint.
    """
    ckpt = load_checkpoint(checkpoint)
    model, config = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    use_amp = dev.type == "cuda" if amp is None else amp
    if use_amp and dev.type != "cuda":
        raise ConfigError("mixed precision (--amp) needs a CUDA device; pass --device cuda")
    recipe = (ckpt.get("train_config") or {}).get("recipe") or {}
    val_split = recipe.get("val_split", 0.1)
    split_data = load_split(data, config.task, split, config.image_size, val_split)
    outputs = evaluate_split(model.to(dev), config.fold, split_data, Preprocess(config.task, config.image_size), dev,
                             batch_size=batch_size, amp=use_amp, desc=f"Epoch {ckpt.get('epoch') or 0}. {split}",
                             progress=progress)
    return {"checkpoint": str(checkpoint), "task": ckpt.get("task", config.name), "fold": config.fold,
            "multiplier": config.multiplier, "epoch": ckpt.get("epoch"), "split": split,
            **json_safe(outputs.summary())}
