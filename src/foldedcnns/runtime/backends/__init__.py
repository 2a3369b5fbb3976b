"""Execution backends: one small class per way of running a model, behind one interface, in one registry.

* ``eager``: the PyTorch module, NCHW.
* ``channels-last``: the module and input in ``torch.channels_last`` (NHWC) memory format.
* ``compile``: ``torch.compile`` of the channels-last module (inductor, frozen weights, static shapes).
* ``onnxruntime``: the module exported to ONNX in memory and run by ONNX Runtime.
* ``cuda-graphs``: the channels-last module captured once into a CUDA graph and replayed (CUDA only).
* ``openvino``: the module converted to OpenVINO in memory and compiled for the CPU (static shapes).
* ``openvino-streams``: the same, each call's batch split over one stream per thread, run concurrently
  (chosen by name, not searched by default: docs/engines.md).

``int8`` is post-training quantization by the backends with ``quantizes = True`` (``openvino``,
``openvino-streams``, ``onnxruntime``), calibrated on images of the task carried by the
:class:`~foldedcnns.runtime.engine.Engine`. A new backend is one module and one :func:`register_backend`
line below (docs/architecture.md).
"""

from __future__ import annotations

import torch

from foldedcnns.runtime.backends.base import (
    BACKENDS,
    PRECISIONS,
    Backend,
    BackendUnavailable,
    Prepared,
    Runner,
    get_backend,
    precision_dtype,
    quantizing_backends,
    register_backend,
)
from foldedcnns.runtime.backends.cuda_graphs import CudaGraphsBackend
from foldedcnns.runtime.backends.onnxruntime import ONNX_OPSET, OnnxRuntimeBackend, export_onnx_bytes
from foldedcnns.runtime.backends.openvino import OpenVinoBackend, OpenVinoStreamsBackend
from foldedcnns.runtime.backends.quantize import QUANTIZED_PRECISIONS, calibration_notice, is_quantized
from foldedcnns.runtime.backends.torch_backends import (
    COMPILE_RECOMPILE_LIMIT,
    ChannelsLastBackend,
    CompileBackend,
    EagerBackend,
    compile_limits,
)

for _backend in (EagerBackend, ChannelsLastBackend, CompileBackend, OnnxRuntimeBackend, CudaGraphsBackend,
                 OpenVinoBackend, OpenVinoStreamsBackend):
    register_backend(_backend)


def available_backends(device: str | torch.device = "cpu", precision: str = "fp32") -> list[str]:
    """Names of the backends that can run on ``device`` at ``precision`` here."""
    return [name for name, b in BACKENDS.items() if b.is_available(device, precision)[0]]


__all__ = [
    "BACKENDS",
    "COMPILE_RECOMPILE_LIMIT",
    "ONNX_OPSET",
    "PRECISIONS",
    "QUANTIZED_PRECISIONS",
    "Backend",
    "BackendUnavailable",
    "ChannelsLastBackend",
    "CompileBackend",
    "CudaGraphsBackend",
    "EagerBackend",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "OpenVinoStreamsBackend",
    "Prepared",
    "Runner",
    "available_backends",
    "calibration_notice",
    "compile_limits",
    "export_onnx_bytes",
    "get_backend",
    "is_quantized",
    "precision_dtype",
    "quantizing_backends",
    "register_backend",
]
