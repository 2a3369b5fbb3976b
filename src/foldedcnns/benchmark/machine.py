"""The machine a benchmark ran on: CPU model, core and thread counts, library versions, GPU."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch

from foldedcnns import __version__

CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else the platform's processor string)."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")) -> list[str]:
    """The vector/matrix extensions among ``wanted`` that the CPU reports."""
    if not CPUINFO.is_file():
        return []
    for line in CPUINFO.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in wanted if f in have]
    return []


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Plain data describing the machine and software a benchmark ran with."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "foldedcnns": __version__,
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": device,
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        dev = torch.device(device)
        info.update(gpu=torch.cuda.get_device_name(dev), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info
