"""A closed-loop load generator in the style of Triton's perf_analyzer: C requests always in flight.

For each concurrency level C, C asyncio workers share one ``httpx.AsyncClient`` (a pool of C
connections) and each sends its next request as soon as its last one is answered, for ``seconds``
after ``warmup_s`` seconds that are not counted. Request bodies are built once before the clock starts:
one image file as is (``image/*``), K images as a multipart form, or (``payload="npy"``) K images
decoded and resized to the model's input as one ``.npy`` array. Reported per level: images/s and
requests/s of the successful (200) answers, p50/p95/p99/max latency of those, and answers by status
(``"error"`` counts transport failures). When the server is this package's native one, the deltas of
its ``/metrics`` also give the mean queue and compute time and the mean batch size.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foldedcnns.data.imageio import is_image_file, read_image
from foldedcnns.errors import ConfigError, DataError, first_line
from foldedcnns.inference.preprocess import stack_frames
from foldedcnns.serving.metrics import require

MAX_FILES = 4096  # images read from --images


@dataclass
class LevelResult:
    concurrency: int
    images_per_request: int
    seconds: float
    requests: int
    images: int
    images_per_s: float
    requests_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    statuses: dict[str, int] = field(default_factory=dict)
    server: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_paths(folder: str | Path) -> list[Path]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
    if not paths:
        raise DataError(f"no images under {folder}; pass --images DIR with PNG or JPEG files")
    return paths[:MAX_FILES]


def build_bodies(paths: Sequence[Path], per_request: int, payload: str = "image",
                 size: tuple[int, int] | None = None) -> list[tuple[bytes, str]]:
    """(body, content type) of each distinct request, cycling through ``paths``."""
    if per_request < 1:
        raise ConfigError(f"--images-per-request must be >= 1, got {per_request}")
    files = itertools.cycle(paths)
    count = max(1, len(paths) // per_request)
    bodies = []
    for _ in range(count):
        group = [next(files) for _ in range(per_request)]
        if payload == "npy":
            if size is None:
                raise ConfigError("npy payloads need the model's input size (from GET /v1/model)")
            buffer = io.BytesIO()
            np.save(buffer, stack_frames([read_image(p) for p in group], size[0], size[1]))
            bodies.append((buffer.getvalue(), "application/x-npy"))
        elif per_request == 1:
            kind = "image/jpeg" if group[0].suffix.lower() in (".jpg", ".jpeg") else "image/png"
            bodies.append((group[0].read_bytes(), kind))
        else:
            bodies.append(_multipart([p.read_bytes() for p in group], [p.name for p in group]))
    return bodies


def _multipart(files: Sequence[bytes], names: Sequence[str]) -> tuple[bytes, str]:
    boundary = "foldedcnns-loadtest-boundary-7f3a"
    out = io.BytesIO()
    for i, (data, name) in enumerate(zip(files, names, strict=True)):
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image{i}\"; filename=\"{name}\"\r\n"
                  f"Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if values else None


async def _scrape(url: str) -> dict[str, float]:
    """Sums and counts of this package's histograms on ``url``/metrics (empty for other servers)."""
    httpx = require("httpx", "loadtest")
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:  # not the load's pool: all its connections are busy
            text = (await client.get(f"{url}/metrics")).text
    except httpx.HTTPError:
        return {}
    found = {}
    for name in ("queue_seconds", "compute_seconds", "batch_images", "batch_padded_slots"):
        for part in ("sum", "count"):
            match = re.search(rf"^foldedcnns_{name}_{part} ([0-9.e+-]+)$", text, re.MULTILINE)
            if match:
                found[f"{name}_{part}"] = float(match.group(1))
    return found


def _server_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    out = {}
    if delta("queue_seconds_count") > 0:
        out["queue_ms"] = 1000 * delta("queue_seconds_sum") / delta("queue_seconds_count")
    if delta("compute_seconds_count") > 0:
        batches = delta("compute_seconds_count")
        out["compute_ms_per_batch"] = 1000 * delta("compute_seconds_sum") / batches
        out["batch_images"] = delta("batch_images_sum") / batches
        out["padded_slots"] = delta("batch_padded_slots_sum") / batches
    return out


async def run_level(url: str, bodies: Sequence[tuple[bytes, str]], concurrency: int, per_request: int,
                    seconds: float, warmup_s: float = 1.0, timeout_s: float = 30.0) -> LevelResult:
    """Keep ``concurrency`` requests in flight on ``url``/v1/predict for ``warmup_s + seconds``."""
    httpx = require("httpx", "loadtest")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    counter = itertools.count()
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        start = time.perf_counter()
        window = [start + warmup_s, start + warmup_s + seconds]
        before: dict[str, float] = {}

        async def worker(offset: int) -> None:
            while True:
                now = time.perf_counter()
                if now >= window[1]:
                    return
                body, kind = bodies[(next(counter) + offset) % len(bodies)]
                sent = time.perf_counter()
                try:
                    response = await client.post(f"{url}/v1/predict", content=body, headers={"content-type": kind})
                    status = str(response.status_code)
                except httpx.HTTPError:
                    status = "error"
                done = time.perf_counter()
                if window[0] <= done <= window[1]:  # completions inside the measured window
                    statuses[status] += 1
                    if status == "200":
                        latencies.append(done - sent)

        async def mark() -> None:
            await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
            before.update(await _scrape(url))

        marker = asyncio.ensure_future(mark())
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        await marker
    after = await _scrape(url)
    ok = statuses.get("200", 0)
    return LevelResult(concurrency, per_request, seconds, sum(statuses.values()), ok * per_request,
                       ok * per_request / seconds, ok / seconds,
                       *(None if v is None else 1000 * v for v in (percentile(latencies, 50), percentile(latencies, 95),
                                                                   percentile(latencies, 99),
                                                                   max(latencies) if latencies else None)),
                       statuses=dict(sorted(statuses.items())), server=_server_split(before, after))


async def model_size(url: str) -> tuple[int, int] | None:
    httpx = require("httpx", "loadtest")
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            info = (await client.get(f"{url}/v1/model")).json()
        return int(info["input_size"]["height"]), int(info["input_size"]["width"])
    except Exception as exc:
        raise ConfigError(f"cannot reach {url}/v1/model ({first_line(exc)}); is the server running?") from exc


def loadtest(url: str, images: str | Path, *, concurrency: Sequence[int] = (1, 8, 64), per_request: int = 1,
             seconds: float = 5.0, warmup_s: float = 1.0, payload: str = "image") -> list[LevelResult]:
    """Measure every concurrency level in turn (see the module doc); the server must be up."""
    url = url.rstrip("/")
    if seconds <= 0 or warmup_s < 0:
        raise ConfigError(f"--seconds must be > 0 and --warmup >= 0, got {seconds} and {warmup_s}")
    size = asyncio.run(model_size(url))
    bodies = build_bodies(image_paths(images), per_request, payload, size)
    return [asyncio.run(run_level(url, bodies, c, per_request, seconds, warmup_s)) for c in concurrency]
