"""Execution backends: one small class per way of running a model, behind one interface.

* ``eager``: the PyTorch module, NCHW.
* ``channels-last``: the module and input in ``torch.channels_last`` (NHWC) memory format.
* ``compile``: ``torch.compile`` of the channels-last module (inductor, frozen weights, static shapes).
* ``onnxruntime``: the module exported to ONNX in memory and run by ONNX Runtime.
* ``cuda-graphs``: the channels-last module captured once into a CUDA graph and replayed (CUDA only).
* ``openvino``: the module converted to OpenVINO in memory and compiled for the CPU (static shapes).
* ``openvino-streams``: the same, each call's batch split over one stream per thread, run concurrently
  (not searched by default: no faster than ``openvino`` on 2 cores, docs/engines.md).

``int8`` is post-training quantization by ``openvino`` (NNCF) and ``onnxruntime`` (static QDQ),
calibrated on images of the task (:mod:`~foldedcnns.runtime.backends.quantize`).

``DEFAULT_BACKENDS[device_type]`` is the one list of backends that tune, the demo and the
benchmark scripts search by default on that kind of device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from foldedcnns.errors import ConfigError
from foldedcnns.runtime.backends.base import (
    PRECISIONS,
    Backend,
    BackendUnavailable,
    Prepared,
    precision_dtype,
)
from foldedcnns.runtime.backends.cuda_graphs import CudaGraphsBackend
from foldedcnns.runtime.backends.onnxruntime import ONNX_OPSET, OnnxRuntimeBackend, export_onnx_bytes
from foldedcnns.runtime.backends.openvino import OpenVinoBackend, OpenVinoStreamsBackend
from foldedcnns.runtime.backends.quantize import (
    QUANTIZED_PRECISIONS,
    Calibration,
    calibrated_registry,
    calibration_notice,
    is_quantized,
    load_calibration,
    required_calibration,
)
from foldedcnns.runtime.backends.torch_backends import (
    COMPILE_RECOMPILE_LIMIT,
    ChannelsLastBackend,
    CompileBackend,
    EagerBackend,
    compile_limits,
)

BACKENDS: dict[str, Backend] = {b.name: b for b in (EagerBackend(), ChannelsLastBackend(), CompileBackend(),
                                                   OnnxRuntimeBackend(), CudaGraphsBackend(), OpenVinoBackend(),
                                                   OpenVinoStreamsBackend())}
DEFAULT_BACKENDS: dict[str, tuple[str, ...]] = {
    "cpu": ("eager", "channels-last", "compile", "onnxruntime", "openvino"),
    "cuda": ("eager", "channels-last", "onnxruntime", "cuda-graphs"),
}


def get_backend(name: str, registry: Mapping[str, Backend] | None = None) -> Backend:
    registry = BACKENDS if registry is None else registry
    if name not in registry:
        raise ConfigError(f"unknown backend {name!r}; use one of {', '.join(registry)}")
    return registry[name]


def available_backends(device: str | torch.device = "cpu", precision: str = "fp32") -> list[str]:
    """Names of the backends that can run on ``device`` at ``precision`` here."""
    return [name for name, b in BACKENDS.items() if b.is_available(device, precision)[0]]


__all__ = [
    "BACKENDS",
    "COMPILE_RECOMPILE_LIMIT",
    "DEFAULT_BACKENDS",
    "ONNX_OPSET",
    "PRECISIONS",
    "QUANTIZED_PRECISIONS",
    "Backend",
    "BackendUnavailable",
    "Calibration",
    "ChannelsLastBackend",
    "CompileBackend",
    "CudaGraphsBackend",
    "EagerBackend",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "OpenVinoStreamsBackend",
    "Prepared",
    "available_backends",
    "calibrated_registry",
    "calibration_notice",
    "compile_limits",
    "export_onnx_bytes",
    "get_backend",
    "is_quantized",
    "load_calibration",
    "precision_dtype",
    "required_calibration",
]
