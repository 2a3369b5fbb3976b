"""Input normalisation: the one way uint8 images become the float tensor a model reads.

Values are scaled from [0, 255] to [0, 1]; a task with ``mean``/``std`` is then normalised per
channel. Training, evaluation, distillation, tune, predict and serving all call :func:`to_model_input`,
so a model sees at inference exactly what it saw in training.
"""

from __future__ import annotations

import numpy as np
import torch

from foldedcnns.data.transforms import UINT8_MAX, normalize, to_float
from foldedcnns.errors import ConfigError, ShapeError
from foldedcnns.models.spec import TaskSpec

RGB_CHANNELS = 3
LAYOUTS = ("nhwc", "nchw")


def to_model_input(batch: np.ndarray | torch.Tensor, task: TaskSpec, device: torch.device | str = "cpu",
                   layout: str = "nhwc") -> torch.Tensor:
    """uint8 images -> the float model input ``(N, C, H, W)`` on ``device``.

    ``layout`` ``"nhwc"``: a stack of decoded RGB frames ``(N, H, W, 3)`` (inference, serving);
    ``"nchw"``: a data set's tensor ``(N, C, H, W)`` (training, evaluation). Shapes:
    ``(N, H, W, C) | (N, C, H, W) -> (N, C, H, W)`` float32.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "nhwc":
        check_rgb_task(task)
    tensor = torch.as_tensor(batch)
    channel_axis = 3 if layout == "nhwc" else 1
    if tensor.dtype != torch.uint8 or tensor.dim() != 4 or tensor.shape[channel_axis] != task.in_channels:
        want = "(N, H, W, C)" if layout == "nhwc" else "(N, C, H, W)"
        raise ShapeError(f"expected a uint8 batch {want} with C={task.in_channels} for task {task.name}, "
                         f"got {tensor.dtype} {tuple(tensor.shape)}")
    if layout == "nhwc" and isinstance(batch, np.ndarray) and torch.device(device).type == "cpu":
        x = torch.from_numpy(nhwc_to_float(batch))
    else:
        tensor = tensor.to(device, non_blocking=True)
        x = to_float(tensor.permute(0, 3, 1, 2) if layout == "nhwc" else tensor)
    if task.mean is not None:
        x = normalize(x, task.mean, task.std)
    return x.contiguous()


def nhwc_to_float(batch: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` -> contiguous float32 ``(N, C, H, W)`` in [0, 1], in one NumPy call: the values of
    :func:`~foldedcnns.data.transforms.to_float` bit for bit (the same float32 division), laid out in the same
    pass. PyTorch takes three ops (convert, divide, lay out), each of which gives up the GIL and must take it
    back: on the server's model thread, behind a busy event loop, 64 images took 0.45 ms that way and 0.34 ms
    this way (docs/serving.md)."""
    out = np.empty((batch.shape[0], batch.shape[3], batch.shape[1], batch.shape[2]), np.float32)
    np.divide(batch.transpose(0, 3, 1, 2), np.float32(UINT8_MAX), out=out)
    return out


def check_rgb_task(task: TaskSpec) -> None:
    """Inference reads RGB frames: a task whose model reads another channel count cannot take them."""
    if task.in_channels != RGB_CHANNELS:
        raise ConfigError(f"task {task.name} reads {task.in_channels}-channel images; inference reads RGB frames")
