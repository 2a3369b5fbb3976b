"""Inference: prediction over videos and image folders, ONNX export, distributed inference on Ray."""

from foldedcnns.inference.predictor import Predictions, Predictor, deployment_engine

__all__ = ["Predictions", "Predictor", "deployment_engine"]
