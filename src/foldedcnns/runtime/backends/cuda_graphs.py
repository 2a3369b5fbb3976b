"""``cuda-graphs``: the channels-last module captured once into a CUDA graph and replayed (CUDA only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from foldedcnns.errors import first_line
from foldedcnns.runtime.backends.base import Backend, BackendUnavailable, Runner, torch_input, torch_model

if TYPE_CHECKING:
    from foldedcnns.runtime.engine import Engine


class CudaGraphsBackend(Backend):
    name = "cuda-graphs"
    description = "channels-last module captured into a CUDA graph and replayed (CUDA only)"
    static_shapes = True
    devices = ("cuda",)
    WARMUP_STREAM_CALLS = 3  # calls on a side stream before capture, as the CUDA-graph docs require

    def build(self, model: nn.Module, example: torch.Tensor, engine: Engine, fold: int) -> Runner:
        device, precision = torch.device(engine.device), engine.precision
        torch.backends.cudnn.benchmark = True
        cast = torch_model(model, device, precision, channels_last=True)
        prepare_input = torch_input(device, precision, True)
        static_in = prepare_input(example).clone(memory_format=torch.channels_last)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(self.WARMUP_STREAM_CALLS):
                    cast(static_in)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                static_out = cast(static_in)
        except RuntimeError as exc:
            raise BackendUnavailable(f"CUDA graph capture failed: {first_line(exc)}") from exc

        def graph_input(x: torch.Tensor) -> torch.Tensor:
            if x is static_in:
                return x
            if x.shape != static_in.shape:
                raise BackendUnavailable(f"a CUDA graph is captured for shape {tuple(static_in.shape)}, "
                                         f"got {tuple(x.shape)}; prepare one graph per batch size")
            static_in.copy_(prepare_input(x))
            return static_in

        def run(_x: torch.Tensor) -> torch.Tensor:
            graph.replay()
            return static_out

        return Runner(run, graph_input, lambda y: y.clone(), module=cast, keep=(graph, static_in, static_out))
