"""Arithmetic intensity: operations per byte moved, for a whole model or per layer.

The original's formula (reference section 7), for a batch of B images at fold f (B/f model inputs)::

    ops   = sum_l ops_l * B/f                       ops_l = 2*MACs_l + bias adds
    elts  = sum_l weights_l + sum_l (in_l + out_l) * B/f
    AI    = ops / (bytes_per_element * elts)

Weights are read once per batch; every Conv2d/Linear layer's input and output are read or written
once. Other layers (ReLU, pooling) are not counted. A layer whose AI is below the device's ridge point
(peak FLOP/s over memory bandwidth) is memory-bound.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from foldedcnns.analysis.flops import LayerCost

# Ridge point of the paper's GPU, V100 SXM2: 125 TFLOP/s FP16 tensor cores / 900 GB/s.
V100_RIDGE_FLOPS_PER_BYTE = 125e12 / 900e9


@dataclass(frozen=True)
class Intensity:
    """Operations, bytes moved and their ratio for one batch."""

    ops: float
    bytes: float

    @property
    def arithmetic_intensity(self) -> float:
        return self.ops / self.bytes if self.bytes else 0.0


def layer_intensity(layer: LayerCost, inputs_per_batch: float, bytes_per_element: float) -> Intensity:
    """AI of one layer when it processes ``inputs_per_batch`` model inputs (B/f)."""
    ops = layer.ops * inputs_per_batch
    elements = layer.weights + (layer.in_elements + layer.out_elements) * inputs_per_batch
    return Intensity(ops, bytes_per_element * elements)


def model_intensity(layers: Iterable[LayerCost], inputs_per_batch: float, bytes_per_element: float) -> Intensity:
    """AI of a whole model: sums of ops and of bytes over its Conv2d/Linear layers."""
    parts = [layer_intensity(layer, inputs_per_batch, bytes_per_element) for layer in layers]
    return Intensity(sum(p.ops for p in parts), sum(p.bytes for p in parts))


def inputs_per_batch(batch_size: int, fold: int) -> float:
    """Model inputs for a batch of ``batch_size`` images at fold f: B/f, as the original computes it."""
    return batch_size / fold
