"""Inference: prediction over videos and image folders, ONNX export, distributed inference on Ray."""
