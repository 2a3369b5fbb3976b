"""tune's accuracy cost on a trained model's test images: int8 beside bf16, measured by evaluate's loop, and the
--max-accuracy-drop limit applied."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from foldedcnns.benchmark.tune import TuneConfig
from foldedcnns.training.evaluation import evaluate
from foldedcnns.workflows.tune import tune


@pytest.mark.slow
def test_tune_reports_int8_accuracy_beside_bf16_and_applies_the_limit(colour_classifier: tuple[Path, Path]) -> None:
    for module in ("openvino", "nncf", "onnxruntime", "onnx"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"int8 on both engines needs {module}")
    ckpt, data = colour_classifier
    notices: list[str] = []
    config = TuneConfig(target=str(ckpt), backends=("eager", "openvino", "onnxruntime"),
                        precisions=("fp32", "bf16", "int8"), batch_sizes=(32,), trials=1, screen_seconds=0.05,
                        final_seconds=0.05, final_warmup=1, peak_seconds=0, data=str(data), max_accuracy_drop=-1.0)
    result = tune(config, on_notice=notices.append)
    costs = {(c.backend, c.precision): c for c in result.costs}
    assert {("openvino", "int8"), ("onnxruntime", "int8"), ("openvino", "bf16")} <= set(costs)
    assert costs["openvino", "int8"].agreement >= 0.99 and costs["onnxruntime", "int8"].agreement >= 0.99
    # measured on the f=2 checkpoint's trained weights (not on the random-weight original tuned beside it)
    assert costs["openvino", "int8"].fp32_accuracy == pytest.approx(evaluate(ckpt, data, "test")["top1"] / 100)
    assert costs["openvino", "int8"].fp32_accuracy >= 0.9
    assert any("int8 is calibrated on 120 images of" in n for n in notices)
    # every precision lost more than -1 points, so only fp32 is left in the search
    assert {r.precision for r in result.final} == {"fp32"}
