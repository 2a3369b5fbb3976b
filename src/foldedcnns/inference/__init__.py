"""Inference: prediction over videos and image folders, ONNX export, distributed inference on Ray."""

from foldedcnns.inference.predictor import Predictions, Predictor

__all__ = ["Predictions", "Predictor"]
