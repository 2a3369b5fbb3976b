"""Knowledge distillation: a teacher's logits, computed once and cached, as training targets.

The original (reference section 4.7) runs the unfolded teacher once over the un-augmented training
images, keeps its raw logits and trains the folded student with MSE between the student's per-image
logits (after unfolding) and those logits. :func:`distill_loss` offers that (``"mse"``) and the
Hinton-style KL divergence between temperature-softened distributions (``"kl"``, scaled by T^2).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from foldedcnns.data.model_input import to_model_input
from foldedcnns.errors import ConfigError, DataError
from foldedcnns.models.registry import ModelConfig
from foldedcnns.models.spec import TaskSpec
from foldedcnns.runtime.backends import Prepared
from foldedcnns.runtime.checkpoint import load_checkpoint, model_from_checkpoint
from foldedcnns.runtime.engine import Engine
from foldedcnns.utils.atomic import atomic_save

DISTILL_LOSSES = ("mse", "kl")
DEFAULT_DISTILL_LOSS = "mse"
DEFAULT_DISTILL_WEIGHT = 1.0  # the teacher's logits only, as the original
DEFAULT_TEMPERATURE = 4.0
CACHE_NAME = "teacher_logits.pt"


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = DEFAULT_DISTILL_LOSS,
                 temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Per-image distillation loss. Shapes: student (N, K) and teacher (N, K) logits -> (N,).

    ``mse``: mean over classes of (student - teacher)^2, i.e. ``nn.MSELoss`` per image (the original).
    ``kl``: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
    student = student.float()
    teacher = teacher.float()
    if kind == "mse":
        return (student - teacher).pow(2).mean(dim=1)
    if kind == "kl":
        if not temperature > 0:
            raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
        log_p_student = F.log_softmax(student / temperature, dim=1)
        log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
        kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
        return kl * temperature**2
    raise ConfigError(f"unknown distillation loss {kind!r}; choose one of {', '.join(DISTILL_LOSSES)}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """A SHA-256 of the tensors' bytes: identifies the exact images a cache was computed on."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_teacher(path: str | Path, student: ModelConfig, engine: Engine | None = None, *,
                 batch_images: int = 256) -> tuple[Prepared, ModelConfig]:
    """A teacher checkpoint made ready to classify on ``engine`` (default: fp32 eager on the CPU), and its
    model config.

    The teacher must classify the student's classes at the student's input size.
    """
    model, config = model_from_checkpoint(load_checkpoint(path, map_location="cpu"))
    if config.task.class_names != student.task.class_names:
        raise ConfigError(f"teacher {path} was trained on classes {list(config.task.class_names)[:5]}..., "
                          f"not those of {student.task.name}; pass a teacher checkpoint of the same task")
    if config.image_size != student.image_size:
        raise ConfigError(f"teacher {path} reads {config.image_size} images but the student reads "
                          f"{student.image_size}; pass a teacher with the student's input size")
    runner = (Engine() if engine is None else engine).prepare(model, batch_images)
    return runner, config


def compute_logits(teacher: Prepared, images: torch.Tensor, task: TaskSpec, batch_size: int = 256) -> torch.Tensor:
    """Float32 logits of ``teacher`` over uint8 ``images``, normalised as ``task`` says, on the CPU.

    Shapes: ``(N, C, H, W)`` uint8 -> ``(N, K)``; batches of ``batch_size`` images.
    """
    outs = []
    for start in range(0, images.shape[0], batch_size):
        x = to_model_input(images[start:start + batch_size], task, teacher.device, layout="nchw")
        outs.append(teacher.classify(x).cpu())
    return torch.cat(outs) if outs else torch.zeros(0, task.num_classes)


def cached_teacher_logits(cache_dir: str | Path, teacher_path: str | Path, student: ModelConfig,
                          images: torch.Tensor, engine: Engine | None = None, batch_size: int = 256,
                          ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Teacher logits for uint8 ``images`` on ``engine`` (default: fp32 eager on the CPU), computed once and
    cached in ``cache_dir/teacher_logits.pt``.

    The cache is keyed by the teacher file's SHA-256 and a fingerprint of the images; a stale cache is
    recomputed. The teacher reads the images normalised as its own task says. Returns the (N, K)
    logits and info (teacher path, hash, whether the cache was used).
    """
    cache = Path(cache_dir) / CACHE_NAME
    teacher_hash = file_sha256(teacher_path)
    data_hash = tensor_fingerprint(images)
    if cache.is_file():
        data = torch.load(cache, map_location="cpu", weights_only=True)
        if data.get("teacher_sha256") == teacher_hash and data.get("data_sha256") == data_hash:
            return data["logits"], {"teacher": str(teacher_path), "teacher_sha256": teacher_hash, "cached": True}
    teacher, config = load_teacher(teacher_path, student, engine, batch_images=batch_size)
    logits = compute_logits(teacher, images, config.task, batch_size)
    if logits.shape != (images.shape[0], student.task.num_classes):
        raise DataError(f"teacher {teacher_path} produced logits of shape {tuple(logits.shape)}; "
                        f"expected ({images.shape[0]}, {student.task.num_classes})")
    payload = {"teacher_sha256": teacher_hash, "data_sha256": data_hash, "logits": logits}
    atomic_save(cache, lambda tmp: torch.save(payload, tmp))
    return logits, {"teacher": str(teacher_path), "teacher_sha256": teacher_hash, "cached": False}
