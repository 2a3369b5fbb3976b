"""Per-layer cost of a model: parameters, multiply-accumulates, FLOPs, activations.

Counting convention (one place for it):

* ``macs``: multiply-accumulates of Conv2d and Linear layers, ``out_elements * C_in/groups * k_h * k_w``
  for a conv and ``in_features * out_features`` for a linear layer.
* ``flops = 2 * macs`` (one multiply-accumulate = two floating-point operations).
* ``flops_reference``: the original release's published convention (its ``model_map.json``), which also
  counts one operation per conv output element for the bias: ``2 * (macs + sum_conv_with_bias out_elements)``.
* ReLU, pooling, flatten, BatchNorm and additions count zero; they are listed in ``FlopReport.uncounted``
  rather than silently dropped.

All counts are for ONE model input, which is f images for a FoldedCNN; ``flops_per_image`` divides by f.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from foldedcnns.errors import ConfigError
from foldedcnns.models.registry import ModelConfig, build_from_config

COUNTED_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerCost:
    """Cost of one Conv2d or Linear layer for one model input (batch 1)."""

    name: str
    kind: str  # "conv" | "linear"
    input_shape: tuple[int, ...]  # without the batch dimension
    output_shape: tuple[int, ...]
    weights: int  # weight elements, bias excluded
    bias: int  # bias elements (0 without bias)
    macs: int
    bias_ops: int  # one add per output element when the layer has a bias

    @property
    def in_elements(self) -> int:
        return _prod(self.input_shape)

    @property
    def out_elements(self) -> int:
        return _prod(self.output_shape)

    @property
    def params(self) -> int:
        return self.weights + self.bias

    @property
    def ops(self) -> int:
        """Operations as the original's ai.py counts them: 2 * MACs + one add per output for a bias."""
        return 2 * self.macs + self.bias_ops

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(in_elements=self.in_elements, out_elements=self.out_elements, ops=self.ops)
        return data


@dataclass(frozen=True)
class FlopReport:
    """Costs of a whole model for one input of shape ``input_shape`` (= ``fold`` images)."""

    input_shape: tuple[int, int, int]
    fold: int
    params: int
    layers: tuple[LayerCost, ...]
    uncounted: dict[str, int] = field(default_factory=dict)  # module type -> number of calls

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def flops_reference(self) -> int:
        """The original's published convention: 2 x (MACs + one add per conv output element with bias)."""
        conv_bias = sum(layer.bias_ops for layer in self.layers if layer.kind == "conv")
        return 2 * (self.macs + conv_bias)

    @property
    def flops_per_image(self) -> float:
        return self.flops / self.fold

    def by_kind(self) -> Counter[str]:
        """MACs per layer kind (conv, linear)."""
        totals: Counter[str] = Counter()
        for layer in self.layers:
            totals[layer.kind] += layer.macs
        return totals


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for dim in shape:
        out *= int(dim)
    return out


def conv_macs(out_shape: tuple[int, int, int], in_channels: int, kernel: tuple[int, int], groups: int = 1) -> int:
    """MACs of a 2-D convolution. ``out_shape`` is (C_out, H_out, W_out) of one input."""
    return _prod(out_shape) * (in_channels // groups) * kernel[0] * kernel[1]


def linear_macs(in_features: int, out_features: int) -> int:
    """MACs of a linear layer for one input vector."""
    return in_features * out_features


def _layer_cost(name: str, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> LayerCost:
    in_shape, out_shape = tuple(x.shape[1:]), tuple(y.shape[1:])
    bias = 0 if module.bias is None else module.bias.numel()
    if isinstance(module, nn.Conv2d):
        macs = conv_macs(out_shape, module.in_channels, module.kernel_size, module.groups)
        kind = "conv"
    else:
        macs = linear_macs(module.in_features, module.out_features) * (_prod(out_shape) // module.out_features)
        kind = "linear"
    bias_ops = _prod(out_shape) if bias else 0
    return LayerCost(name, kind, in_shape, out_shape, module.weight.numel(), bias, macs, bias_ops)


def count_flops(model: nn.Module, input_shape: tuple[int, int, int] | None = None,
                fold: int | None = None) -> FlopReport:
    """Run one input through ``model`` and record every Conv2d and Linear layer's cost.

    ``input_shape`` (C*f, H, W) and ``fold`` default to ``model.config``. The model is run in eval
    mode on a zero tensor of batch 1, on the model's device, and restored to its previous mode.
    """
    config: ModelConfig | None = getattr(model, "config", None)
    if input_shape is None:
        if config is None:
            raise ConfigError("model has no .config; pass input_shape=(C, H, W)")
        input_shape = config.input_shape
    fold = fold if fold is not None else (config.fold if config is not None else 1)
    costs: list[LayerCost] = []
    uncounted: Counter[str] = Counter()
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, COUNTED_TYPES):
            costs.append(_layer_cost(names[module], module, inputs[0], output))
        elif not list(module.children()):
            uncounted[type(module).__name__] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return FlopReport(tuple(input_shape), fold, params, tuple(costs), dict(uncounted))


def model_flops(config: ModelConfig) -> FlopReport:
    """:func:`count_flops` of the model a :class:`ModelConfig` describes (built on the meta device)."""
    with torch.device("meta"):
        return count_flops(build_from_config(config))


def flops_per_image(config: ModelConfig) -> float:
    """FLOPs (2 x MACs) per image: the cost of one folded input divided by the fold."""
    return model_flops(config).flops_per_image
