"""The LitServe anchor of `benchmarks/serve.py`: this package's model runtime served by LitServe (benchmark only).

    .venv/bin/python benchmarks/serve_litserve.py CKPT --port 8200 --backend eager --precision fp32 --threads 2

The same `Predictor` on the same `Engine` as `foldedcnns serve` (:func:`foldedcnns.serving.service.load_predictor`,
warmed up the same way), the same decoding (``read_image`` and ``stack_frames``, as ``foldedcnns predict``) and
the same answer (:func:`foldedcnns.serving.service.predictions_json`), at ``POST /v1/predict``; LitServe batches
requests (``max_batch_size`` = N requests, ``batch_timeout`` = D) in its inference worker process, behind its API-server
process (ZeroMQ between them with ``--fast-queue``, LitServe's advice past 100 requests/s). LitServe reads only
JSON and form bodies, so one small patch hands it the raw ``image/*`` or ``.npy`` body, as the native server
gets it: the two servers see the same request bytes. litserve is a benchmark-only dependency, never a test's.
"""

from __future__ import annotations

import argparse
import io
from typing import Any

import litserve as ls
import litserve.server as ls_server
import numpy as np
import torch

from foldedcnns.data.imageio import read_image
from foldedcnns.inference.predictor import Predictions
from foldedcnns.inference.preprocess import stack_frames
from foldedcnns.runtime import Engine
from foldedcnns.serving.decode import media_type
from foldedcnns.serving.service import load_predictor, predictions_json

_json_or_form = ls_server.BaseRequestHandler._prepare_request


async def _raw_body(self: Any, request: Any, request_type: Any) -> Any:
    """LitServe's request reading, plus raw bodies: ``{"kind", "body"}`` for image/* and application/x-npy."""
    kind = media_type(request.headers.get("content-type"))
    if kind.startswith("image/") or kind == "application/x-npy":
        return {"kind": kind, "body": await request.body()}
    return await _json_or_form(self, request, request_type)


ls_server.BaseRequestHandler._prepare_request = _raw_body  # at import: LitServe's spawned processes get it too


class FoldedAPI(ls.LitAPI):
    def __init__(self, checkpoint: str, engine: Engine, batch_images: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checkpoint, self.engine, self.batch_images = checkpoint, engine, batch_images

    def setup(self, device: Any) -> None:
        if self.engine.threads:
            torch.set_num_threads(self.engine.threads)
        self.predictor = load_predictor(self.checkpoint, engine=self.engine, max_batch_images=self.batch_images)

    def decode_request(self, request) -> np.ndarray:  # unannotated: LitServe reads the body as a Request
        """The data pipeline's decode and resize, as ``foldedcnns predict`` and the native server prepare images."""
        height, width = self.predictor.input_hw
        if request["kind"] == "application/x-npy":
            frames: Any = np.load(io.BytesIO(request["body"]), allow_pickle=False)
        else:
            frames = [read_image(io.BytesIO(request["body"]))]
        return stack_frames(frames, height, width)

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs

    def predict(self, x: list[np.ndarray] | np.ndarray) -> list[Predictions] | Predictions:
        """All requests of LitServe's batch in model batches of N images, answered per request."""
        requests = x if isinstance(x, list) else [x]
        images = np.concatenate(requests) if len(requests) > 1 else requests[0]
        n = self.batch_images
        preds = Predictions.concatenate([self.predictor.predict_batch(images[i:i + n])
                                         for i in range(0, len(images), n)], self.predictor.class_names)
        out, start = [], 0
        for r in requests:
            stop = start + len(r)
            out.append(Predictions(preds.labels[start:stop], preds.scores[start:stop],
                                   preds.probabilities[start:stop], preds.class_names))
            start = stop
        return out if isinstance(x, list) else out[0]

    def unbatch(self, output: list[Predictions]) -> list[Predictions]:
        return output

    def encode_response(self, output: Predictions) -> dict[str, Any]:
        return {"predictions": predictions_json(output)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-images", type=int, default=64, help="N: images per model call; requests per batch")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="LitServe's batch_timeout, in ms")
    parser.add_argument("--fast-queue", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    engine = Engine(args.backend, args.precision, threads=args.threads)
    api = FoldedAPI(args.checkpoint, engine, args.batch_images, max_batch_size=args.batch_images,
                    batch_timeout=args.max_delay_ms / 1000.0, api_path="/v1/predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=args.fast_queue)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
