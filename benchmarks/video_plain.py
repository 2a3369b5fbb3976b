"""The plain script a user would write to classify a region of every video frame with an exported FoldedCNN.

    .venv/bin/python benchmarks/video_plain.py MODEL.xml VIDEO --crop X,Y,W,H --size HxW --fold 4 --out labels.npy

No foldedcnns: PyAV decodes (FFmpeg's threads), ``frame.to_ndarray(format="rgb24")`` converts the whole
frame, NumPy cuts the crop and resizes it (nearest neighbour, OpenCV's rule), and the OpenVINO IR written by
``foldedcnns export CKPT --format openvino`` classifies batches of ``--batch`` images (OpenVINO's own threads,
``INFERENCE_PRECISION_HINT`` ``--precision``). The IR reads folded inputs ``(batch, f*3, H, W)``: images
scaled to [0, 1] (then ``(x - mean) / std`` when the task has them), image ``n*f + j`` in channels
``[3j, 3j+3)`` of row ``n``; it returns ``(batch, f*K)`` logits, block ``j`` of a row for image ``j``. A last
partial group is padded with its own images, as foldedcnns pads it. Decoding and the model take turns in
one thread, as a simple loop does.

Writes the labels (one per frame, ``.npy``) and prints one JSON line: ``frames``, ``seconds`` (the loop, from
the first packet to the last label) and ``setup_seconds`` (reading and compiling the IR). ``video_e2e.py``
runs it as a subprocess and times the whole command.
"""

from __future__ import annotations

import argparse
import json
import time

import av
import numpy as np
import openvino as ov


def nearest(src: int, dst: int) -> np.ndarray:
    """Source indices of a nearest-neighbour resize from ``src`` to ``dst`` pixels (OpenCV's INTER_NEAREST)."""
    return (np.arange(dst) * src) // dst


def classify(compiled: ov.CompiledModel, images: list[np.ndarray], fold: int, mean: np.ndarray | None,
             std: np.ndarray | None) -> np.ndarray:
    """Labels of ``images`` (each ``(H, W, 3)`` uint8)."""
    n = len(images)
    pad = (-n) % fold
    if pad:  # repeat the images of the last, partial group
        tail = n % fold
        images = images + [images[n - tail + i % tail] for i in range(pad)]
    x = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # (N, 3, H, W)
    if mean is not None:
        x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    folded = np.ascontiguousarray(x.reshape(len(images) // fold, fold * 3, *x.shape[2:]))
    logits = compiled(folded)[0]
    return logits.reshape(len(images), -1).argmax(1)[:n]


def floats(text: str | None) -> np.ndarray | None:
    return None if text is None else np.array([float(v) for v in text.split(",")], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="OpenVINO IR .xml")
    parser.add_argument("video")
    parser.add_argument("--crop", required=True, help="x,y,w,h")
    parser.add_argument("--size", required=True, help="the model's input, HxW")
    parser.add_argument("--fold", type=int, required=True)
    parser.add_argument("--mean", default=None, help="per-channel mean, r,g,b (after scaling to [0, 1])")
    parser.add_argument("--std", default=None)
    parser.add_argument("--batch", type=int, default=256, help="images per model call")
    parser.add_argument("--precision", default="bf16", help="OpenVINO INFERENCE_PRECISION_HINT")
    parser.add_argument("--out", required=True, help="labels, .npy")
    args = parser.parse_args()
    started = time.perf_counter()
    compiled = ov.Core().compile_model(args.model, "CPU", {"INFERENCE_PRECISION_HINT": args.precision})
    setup = time.perf_counter() - started
    x, y, w, h = (int(v) for v in args.crop.split(","))
    out_h, out_w = (int(v) for v in args.size.lower().split("x"))
    rows, cols = y + nearest(h, out_h), x + nearest(w, out_w)
    mean, std = floats(args.mean), floats(args.std)

    started = time.perf_counter()
    container = av.open(args.video)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads
    batch: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for frame in container.decode(stream):
        rgb = frame.to_ndarray(format="rgb24")
        batch.append(rgb[rows[:, None], cols[None, :]])
        if len(batch) == args.batch:
            labels.append(classify(compiled, batch, args.fold, mean, std))
            batch = []
    if batch:
        labels.append(classify(compiled, batch, args.fold, mean, std))
    container.close()
    result = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    seconds = time.perf_counter() - started
    np.save(args.out, result)
    print(json.dumps({"frames": len(result), "seconds": seconds, "setup_seconds": setup}))


if __name__ == "__main__":
    main()
