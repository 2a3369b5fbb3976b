"""The epoch loop of one (task, fold) run: :class:`TrainLoop`.

Images are held in memory as uint8 tensors on the device. Every epoch the training images (of the
classes the curriculum has introduced) are shuffled with a seeded generator and cut into batches of
B images, B a multiple of f. A batch is augmented as uint8 (:func:`augment`), turned into model
input by :func:`foldedcnns.runtime.to_model_input`, and run through the model by
:func:`foldedcnns.core.run_folded` (pad the last partial group with its own images, fold, run,
unfold, drop the padded rows): loss and accuracy are over the real images only, so every image
counts once. Validation and test run through the runtime (:mod:`foldedcnns.training.evaluation`).
Files and progress are callbacks (:mod:`foldedcnns.training.callbacks`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from foldedcnns.core.folding import run_folded
from foldedcnns.data.model_input import to_model_input
from foldedcnns.data.transforms import random_crop, random_hflip
from foldedcnns.errors import ConfigError
from foldedcnns.models.registry import build_model
from foldedcnns.runtime.checkpoint import make_checkpoint
from foldedcnns.training.callbacks import Callback
from foldedcnns.training.config import RunPlan
from foldedcnns.training.distill import cached_teacher_logits, distill_loss
from foldedcnns.training.evaluation import eval_engine, evaluate_split
from foldedcnns.training.metrics import EpochMetrics, MetricAccumulator
from foldedcnns.training.optim import make_optimizer, make_scheduler
from foldedcnns.training.recipes import Recipe
from foldedcnns.training.rng import get_rng_state, seed_everything, set_rng_state
from foldedcnns.training.slots import SlotWarmup
from foldedcnns.training.splits import TrainingData


def augment(images: torch.Tensor, recipe: Recipe, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """The recipe's random augmentation of a uint8 batch ``(N, C, H, W)``, before :func:`to_model_input`.

    ``crop_flip``: pad by ``crop_padding`` black (0) pixels, crop ``size`` at a random place, mirror
    half the images. Crop and flip move pixels only, so doing them before the per-pixel scaling and
    normalisation gives the same input as doing them after.
    """
    if recipe.augment != "crop_flip":
        return images
    return random_hflip(random_crop(images, size, recipe.crop_padding, generator), generator)


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Treat denormal floats as zero on the CPU while the block runs (restored after).

    Small ReLU CNNs produce many denormal activations and gradients late in training, and on x86 each
    takes a slow path (docs/training.md). Results change only below 1e-38.
    """
    if not enabled or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class TrainLoop:
    """Model, optimiser, scheduler, AMP scaler, slot warm-up and RNG of one run, and its epoch loop.

    ``history`` and ``best`` (:class:`EpochMetrics`) are the run's state; ``resume`` (a ``last.pt``
    dict) restores all of it. :meth:`fit` trains the remaining epochs.
    """

    def __init__(self, plan: RunPlan, data: TrainingData, run_dir: Path, resume: dict[str, Any] | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.plan, self.data, self.run_dir, self.callbacks = plan, data, run_dir, list(callbacks)
        self.device, self.fold, self.cfg = plan.device, plan.fold, plan.config
        seed_everything(self.cfg.seed)
        self.model = build_model(self.cfg.task, fold=plan.fold, multiplier=self.cfg.multiplier, init=True)
        self.model.to(self.device)
        self.slots = SlotWarmup(self.model, plan.fold, plan.recipe.slot_warmup)
        self.slots.separate()
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.generator = torch.Generator().manual_seed(self.cfg.seed)
        self.optimizer = make_optimizer(self.model, plan.recipe)
        self.scheduler = make_scheduler(self.optimizer, plan.recipe)
        self.scaler = torch.amp.GradScaler("cuda", enabled=plan.amp)
        self.history: list[EpochMetrics] = []
        self.best: EpochMetrics | None = None
        self.start_epoch = 0
        self.resumed_from: int | None = None
        self.teacher_info: dict[str, Any] | None = None
        self.teacher_logits: torch.Tensor | None = None
        self.train_images = data.train.images.to(self.device)
        self.train_labels = data.train.labels.to(self.device)
        if resume is not None:
            self._restore(resume)
        if self.cfg.distill_from is not None:
            self._load_teacher()

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["state_dict"])
        state = ckpt["train_state"]
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = [EpochMetrics.from_row(row) for row in state["history"]]
        self.best = None if state.get("best") is None else EpochMetrics.from_row(state["best"])
        self.start_epoch = int(ckpt["epoch"])
        self.resumed_from = self.start_epoch
        set_rng_state(state["rng"])
        self.generator.set_state(state["data_rng"])

    def _load_teacher(self) -> None:
        cfg = self.cfg
        logits, info = cached_teacher_logits(self.run_dir, cfg.distill_from, self.plan.model_config,
                                             self.data.train.images,
                                             eval_engine(self.device, channels_last=cfg.channels_last),
                                             cfg.eval_batch_size)
        top1 = 100.0 * (logits.argmax(1) == self.data.train.labels).double().mean().item()
        self.teacher_info = {**info, "loss": cfg.distill_loss, "train_top1": top1,
                             "temperature": cfg.distill_temperature if cfg.distill_loss == "kl" else None}
        self.teacher_logits = logits.to(self.device)

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # -- one epoch --------------------------------------------------------------------------------

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Folded inputs ``(G, f*C, H, W) -> (G, f*K)``, in channels-last memory format when the run uses it."""
        return self.model(x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Per-image loss (N,): cross-entropy, the distillation loss, or ``w * distill + (1 - w) * CE``."""
        cfg = self.cfg
        if self.teacher_logits is None:
            return F.cross_entropy(logits, labels, reduction="none")
        soft = distill_loss(logits, self.teacher_logits[index], cfg.distill_loss, cfg.distill_temperature)
        if cfg.distill_weight >= 1.0:
            return soft
        hard = F.cross_entropy(logits, labels, reduction="none")
        return cfg.distill_weight * soft + (1.0 - cfg.distill_weight) * hard

    def train_epoch(self, epoch: int, active: int) -> dict[str, float | int]:
        """One pass over the training images of the first ``active`` classes; their summary."""
        plan, spec = self.plan, self.plan.spec
        self.model.train()
        labels_cpu = self.data.train.labels
        candidates = torch.nonzero(labels_cpu < active).flatten() if active < spec.num_classes \
            else torch.arange(labels_cpu.shape[0])
        order = candidates[torch.randperm(candidates.shape[0], generator=self.generator)].to(self.device)
        n, batch = order.shape[0], plan.batch_size
        size = tuple(plan.model_config.image_size[1:])
        acc = MetricAccumulator(self.device)
        self._emit("on_train_epoch_start", epoch, -(-n // batch))
        for step, start in enumerate(range(0, n, batch)):
            index = order[start:start + batch]
            x = to_model_input(augment(self.train_images[index], plan.recipe, size, self.generator), spec,
                               self.device, layout="nchw")
            y = self.train_labels[index]
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=plan.amp):
                logits = run_folded(self._forward, x, self.fold).float()
            per_image = self._loss(logits, y, index)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(per_image.mean()).backward()
            with self.slots.blend(epoch, (start + index.shape[0]) / n):
                self.scaler.step(self.optimizer)
            self.scaler.update()
            acc.add(per_image, logits, y)
            self._emit("on_train_batch_end", epoch, step, start + batch >= n, acc)
        self._emit("on_train_epoch_end", epoch)
        return acc.summary()

    def evaluate_epoch(self, epoch: int, active: int) -> tuple[dict[str, Any], float, dict[str, Any] | None]:
        """Validation summary, validation Top-1 over the first ``active`` classes, test summary (or None)."""
        cfg = self.cfg
        runner = eval_engine(self.device, channels_last=cfg.channels_last).prepare(self.model, cfg.eval_batch_size)
        outputs = {name: evaluate_split(runner, split, self.plan.spec, batch_size=cfg.eval_batch_size,
                                        epoch=epoch + 1, name=name, progress=cfg.progress)
                   for name, split in (("val", self.data.val), ("test", self.data.test)) if split is not None}
        val, test = outputs["val"], outputs.get("test")
        seen = val.summary(val.labels < active)["top1"]
        return val.summary(), seen, None if test is None else test.summary()

    def checkpoint(self, metrics: EpochMetrics, full: bool) -> dict[str, Any]:
        """The checkpoint after ``metrics.epoch``: weights, metrics and settings; ``full`` adds the train state."""
        fields: dict[str, Any] = {"epoch": metrics.epoch, "metrics": metrics.to_row(), "task": self.plan.model_name,
                                  "train_config": self.plan.settings()}
        if full:
            fields["train_state"] = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.plan.amp else None,
                "curriculum": {"epoch": metrics.epoch, "classes": metrics.classes},
                "rng": get_rng_state(), "data_rng": self.generator.get_state(),
                "best": None if self.best is None else self.best.to_row(),
                "history": [m.to_row() for m in self.history],
            }
        return make_checkpoint(self.model, self.plan.model_config, **fields)

    def fit(self) -> list[EpochMetrics]:
        """Train from ``start_epoch`` to the recipe's last epoch; returns the whole history."""
        plan = self.plan
        self._emit("on_fit_start")
        for epoch in range(self.start_epoch, plan.recipe.epochs):
            started = time.perf_counter()
            active = plan.curriculum.classes_at(epoch) if plan.curriculum else plan.spec.num_classes
            self.slots.begin_epoch(epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            train = self.train_epoch(epoch, active)
            val, seen, test = self.evaluate_epoch(epoch, active)
            if self.scheduler is not None:
                self.scheduler.step()
            metrics = EpochMetrics.from_splits(epoch=epoch + 1, classes=active, lr=lr, train=train, val=val,
                                               val_top1_seen=seen, test=test, seconds=time.perf_counter() - started)
            self.history.append(metrics)
            self._emit("on_epoch_end", metrics)
        if not self.history:
            raise ConfigError(f"{self.run_dir} has no finished epoch; pass --epochs >= 1")
        self._emit("on_fit_end")
        return self.history
