"""Analysis: FLOP counting and arithmetic intensity (pure functions over per-layer costs)."""

from foldedcnns.analysis.flops import FlopReport, LayerCost, count_flops, flops_per_image, model_flops
from foldedcnns.analysis.intensity import Intensity, layer_intensity, model_intensity
from foldedcnns.analysis.report import (
    IntensityRow,
    LayerIntensityRow,
    flops_summary,
    intensity_rows,
    layer_intensity_rows,
)

__all__ = [
    "FlopReport",
    "Intensity",
    "IntensityRow",
    "LayerCost",
    "LayerIntensityRow",
    "count_flops",
    "flops_per_image",
    "flops_summary",
    "intensity_rows",
    "layer_intensity",
    "layer_intensity_rows",
    "model_flops",
    "model_intensity",
]
