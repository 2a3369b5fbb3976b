"""Per-layer times of the ``compile`` engine (frozen inductor, CPU): ``torch.profiler`` over its kernels.

``torch.profiler`` times every op and generated kernel that inductor's code calls: oneDNN
convolutions (with their fused ReLU) and the ``cpp_fused_*`` kernels it writes for pooling, layout
copies and other elementwise work (kind ``pool`` when the kernel's name has ``max_pool``, else ``fused``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from foldedcnns.benchmark.profilers.base import LayerFlops, LayerTime, in_order
from foldedcnns.errors import ConfigError
from foldedcnns.runtime.engine import Engine

COMPILED_CALL = "## Call CompiledFxGraph"  # torch.profiler's event around one call of inductor's code
COMPILED_CONV_OPS = ("mkldnn::_convolution_pointwise", "aten::convolution", "aten::mkldnn_convolution")
COMPILED_LINEAR_OPS = ("mkldnn::_linear_pointwise", "mkl::_mkl_linear", "aten::addmm", "aten::mm")


def compiled_kind(name: str) -> str:
    """The layer kind of an op or kernel that inductor's code calls."""
    if name in COMPILED_CONV_OPS:
        return "conv"
    if name in COMPILED_LINEAR_OPS:
        return "linear"
    if "cpp_fused" in name:
        return "pool" if "max_pool" in name else "fused"
    return name.split("::")[-1].lower()


class CompileProfiler:
    """``torch.profiler`` over the ops and kernels of the ``compile`` engine's frozen compilation (CPU)."""

    backends: ClassVar[tuple[str, ...]] = ("compile",)
    quantized: ClassVar[bool] = False

    def __init__(self, model: nn.Module, x: torch.Tensor, engine: Engine, flops: LayerFlops) -> None:
        if torch.device(engine.resolved().device).type != "cpu":
            raise ConfigError("per-layer profiles of the compile backend exist on the CPU only")
        import torch._inductor.config as inductor_config  # torch's own submodule, loaded only when compiling

        self.flops = flops
        # kernel profiling makes inductor's generated kernels show up as profiler events
        with inductor_config.patch({"cpp.enable_kernel_profile": True}):
            self.prepared = engine.runner.prepare(model, x, engine)
        self.x = self.prepared.prepare_input(x)
        self.calls: list[list[tuple[str, float]]] = []

    def call(self, record: bool) -> None:
        from torch.profiler import ProfilerActivity, profile

        if not record:
            self.prepared.run(self.x)
            return
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            self.prepared.run(self.x)
        rows = []
        for e in prof.events():
            parent = e.cpu_parent
            if parent is not None and parent.name.startswith(COMPILED_CALL) and not e.name.startswith("aten::empty") \
                    and e.name != "aten::resize_":
                rows.append((e.name, e.cpu_time_total * 1e-6))  # microseconds
        self.calls.append(rows)

    def layers(self) -> list[LayerTime]:
        if not self.calls:
            return []
        names = [f"{i:02d} {name}" for i, (name, _) in enumerate(self.calls[0])]
        durations: dict[str, list[float]] = {n: [] for n in names}
        for rows in self.calls:
            for n, (_, seconds) in zip(names, rows, strict=False):
                durations[n].append(seconds)
        kinds = [compiled_kind(name) for name, _ in self.calls[0]]
        return in_order(names, kinds, durations, self.flops)

    def close(self) -> None:
        self.prepared.close()
