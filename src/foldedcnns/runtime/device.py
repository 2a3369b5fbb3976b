"""Device resolution: the one rule for ``--device`` everywhere (train, evaluate, bench, tune, predict, serve)."""

from __future__ import annotations

import torch

from foldedcnns.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto (CUDA when a GPU is visible, else the CPU), cpu, cuda or cuda:i"


def check_device(device: str | torch.device) -> str:
    """``device`` as a string after checking its form only (``auto``, ``cpu``, ``cuda``, ``cuda:i``), so an
    engine for a GPU worker can be described on a machine without one; :func:`resolve_device` checks the
    device is there."""
    name = str(device)
    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; pass --device {DEVICE_HELP}") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {dev.type!r} is not supported; pass --device {DEVICE_HELP}")
    return str(dev)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when a GPU is visible, else the CPU), ``cpu`` or ``cuda[:i]``.

    CUDA without a visible GPU and any other device type are a one-line :class:`ConfigError`.
    """
    name = check_device(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine (no GPU is visible); pass --device cpu")
    return dev
