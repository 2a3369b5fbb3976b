"""A closed-loop load generator in the style of Triton's perf_analyzer: C requests always in flight.

For each concurrency level C, ``processes`` client processes (default :func:`default_processes`) share
the C connections; on each connection a worker sends its next request as soon as its last one is
answered, for ``seconds`` after ``warmup_s`` seconds that are not counted. Every request is encoded
once, before the clock starts, as the exact bytes of an HTTP/1.1 keep-alive ``POST /v1/predict``: one
image file as is (``image/*``), K images as a multipart form, or (``payload="npy"``) K images decoded
and resized to the model's input as one ``.npy`` array. A worker writes those bytes and reads the
status line, the headers and ``Content-Length`` bytes of body: no HTTP library, no per-request parsing
of the answer beyond its status, so one client process keeps up with far more requests per second than
a Python server answers.

Reported per level: images/s and requests/s of the successful (200) answers, p50/p95/p99/max latency
of those, answers by status (``"error"`` counts transport failures), and the client's own CPU use in
the measured window (the CPU seconds of its processes per second, in cores, and the busiest process's
share of one core). A client whose busiest process uses more than :data:`SATURATED` of a core, or whose
processes together use more than that share of the cores it may run on, is the bottleneck: its figures
are then a floor of what the server does, not its ceiling, and ``client_saturated`` says so. When the
server is this package's native one, the deltas of its ``/metrics`` also give the mean queue and compute
time and the mean batch size.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import multiprocessing
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foldedcnns.data.imageio import is_image_file, read_image
from foldedcnns.errors import ConfigError, DataError, first_line
from foldedcnns.inference.preprocess import stack_frames

MAX_FILES = 4096  # images read from --images
SATURATED = 0.9   # share of a core (busiest process) or of the client's cores (all) past which it is the bottleneck
MAX_HEADER_BYTES = 64 * 1024


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
    processes: int = 1
    client_cpu_cores: float = 0.0        # CPU seconds of the client's processes per measured second
    client_busiest_process: float = 0.0  # the busiest client process's share of one core
    client_cores: int = 1                # cores the client may run on
    client_saturated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def saturation_warning(self) -> str | None:
        """One line when the client was the bottleneck at this level, else None."""
        if not self.client_saturated:
            return None
        return (f"foldedcnns: warning: at concurrency {self.concurrency} the load generator was the bottleneck "
                f"(its {self.processes} process(es) used {self.client_cpu_cores:.2f} of {self.client_cores} cores, "
                f"the busiest {self.client_busiest_process:.0%} of one): these figures are a floor, not the "
                "server's ceiling; add --processes, or run the client on another machine")


def available_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_processes(cores: int | None = None) -> int:
    """A quarter of the cores (at least 1, at most 8): the rest stay with a server on the same host."""
    return max(1, min(8, (cores or available_cores()) // 4))


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


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/prefix`` -> (host, port, prefix without a trailing slash)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"the load generator speaks plain HTTP: give a URL like http://127.0.0.1:8000, got {url!r}")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


def encode_requests(url: str, bodies: Sequence[tuple[bytes, str]]) -> list[bytes]:
    """Each body as the complete bytes of one keep-alive HTTP/1.1 ``POST /v1/predict``."""
    host, port, prefix = split_url(url)
    return [(f"POST {prefix}/v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {kind}\r\n"
             f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body for body, kind in bodies]


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


# -- one client process -------------------------------------------------------------------------------

async def _read_answer(reader: asyncio.StreamReader) -> tuple[str, bool]:
    """(status, keep the connection) of one HTTP/1.1 answer, its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)[1].decode("latin-1")
    length, chunked, keep = 0, False, not lines[0].startswith(b"HTTP/1.0")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep = value.strip().lower() != b"close"
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, keep


async def _client(host: str, port: int, requests: Sequence[bytes], connections: int, offset: int,
                  window: tuple[float, float], grace_s: float) -> dict[str, Any]:
    """Keep ``connections`` requests in flight until ``window[1]`` (``time.monotonic``); record what ends inside."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    cpu: list[float] = []
    counter = itertools.count(offset)
    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + max(0.0, window[0] - time.monotonic()), lambda: cpu.append(time.process_time()))

    async def worker() -> None:
        reader = writer = None
        while time.monotonic() < window[1]:
            request = requests[next(counter) % len(requests)]
            sent = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEADER_BYTES)
                writer.write(request)
                status, keep = await _read_answer(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                status, keep = "error", False
            done = time.monotonic()
            if window[0] <= done <= window[1]:  # completions inside the measured window
                statuses[status] += 1
                if status == "200":
                    latencies.append(done - sent)
            if not keep and writer is not None:
                writer.close()
                reader = writer = None
            if status == "error":
                await asyncio.sleep(0.01)  # a refused connection must not spin
        if writer is not None:
            writer.close()

    tasks = [asyncio.ensure_future(worker()) for _ in range(connections)]
    await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
    cpu.append(time.process_time())
    _, late = await asyncio.wait(tasks, timeout=grace_s)  # answers after the window only close the connections
    for task in late:
        task.cancel()
    return {"latencies": latencies, "statuses": dict(statuses),
            "cpu_s": cpu[-1] - cpu[0] if len(cpu) == 2 else 0.0}


def _client_process(host: str, port: int, requests: Sequence[bytes], connections: int, offset: int,
                     window: tuple[float, float], grace_s: float, out: Any) -> None:
    """A client process: its own event loop (uvloop when installed), its answer sent down ``out``."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        out.send(asyncio.run(_client(host, port, requests, connections, offset, window, grace_s)))
    except Exception as exc:  # reported by the parent as one line
        out.send({"failed": f"{type(exc).__name__}: {first_line(exc)}"})
    finally:
        out.close()


def _context() -> Any:
    # fork: the pre-encoded requests are inherited, not copied through a pipe; spawn where fork is unsafe.
    fork = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if fork else "spawn")


# -- the parent: levels, server metrics, CPU -------------------------------------------------------------

def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read()


def gather_reports(pipes: Sequence[Any], children: Sequence[Any], wait_s: float) -> list[dict[str, Any]]:
    """The report of every client process (one per pipe), each waited for at most ``wait_s``; the processes are
    joined (killed after 5 s) whatever happens. A report with ``failed`` or a silent process: one line."""
    results = []
    try:
        for receive in pipes:
            if not receive.poll(wait_s):
                raise ConfigError(f"a load generator process did not report within {wait_s:.0f} s")
            results.append(receive.recv())
    finally:
        for child in children:
            child.join(5)
            if child.is_alive():
                child.kill()
    failed = [r["failed"] for r in results if "failed" in r]
    if failed:
        raise ConfigError(f"the load generator failed: {failed[0]}")
    return results


def _scrape(url: str) -> dict[str, float]:
    """Sums and counts of this package's histograms on ``url``/metrics (empty for other servers)."""
    try:
        text = _get(f"{url}/metrics", 5.0).decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
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


def run_level(url: str, requests: Sequence[bytes], concurrency: int, per_request: int, seconds: float,
              warmup_s: float = 1.0, processes: int | None = None, timeout_s: float = 30.0) -> LevelResult:
    """Keep ``concurrency`` of the pre-encoded ``requests`` in flight on ``url`` for ``warmup_s + seconds``."""
    host, port, _ = split_url(url)
    procs = max(1, min(concurrency, processes or default_processes()))
    shares = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    context = _context()
    start = time.monotonic() + 0.2  # every process is up before the clock starts
    window = (start + warmup_s, start + warmup_s + seconds)
    pipes, children = [], []
    for i, share in enumerate(shares):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_client_process, daemon=True, name=f"foldedcnns-loadtest-{i}",
                                args=(host, port, requests, share, i * 7919, window, timeout_s, send))
        child.start()
        send.close()
        pipes.append(receive)
        children.append(child)
    time.sleep(max(0.0, window[0] - time.monotonic()))
    before = _scrape(url)
    results = gather_reports(pipes, children, max(1.0, window[1] - time.monotonic()) + timeout_s + 30)
    after = _scrape(url)
    latencies = [v for r in results for v in r["latencies"]]
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r["statuses"])
    ok = statuses.get("200", 0)
    cpu = [r["cpu_s"] / seconds for r in results]
    cores = available_cores()
    saturated = max(cpu) > SATURATED or sum(cpu) > SATURATED * min(cores, procs)
    ms = [None if v is None else 1000 * v for v in (percentile(latencies, 50), percentile(latencies, 95),
                                                    percentile(latencies, 99), max(latencies, default=None))]
    return LevelResult(concurrency, per_request, seconds, sum(statuses.values()), ok * per_request,
                       ok * per_request / seconds, ok / seconds, *ms, statuses=dict(sorted(statuses.items())),
                       server=_server_split(before, after), processes=procs, client_cpu_cores=sum(cpu),
                       client_busiest_process=max(cpu), client_cores=cores, client_saturated=saturated)


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """A one-line ConfigError unless something listens at ``url``'s host and port."""
    host, port, _ = split_url(url)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach {url} ({first_line(exc)}); is the server running?") from exc


def model_size(url: str) -> tuple[int, int]:
    try:
        info = json.loads(_get(f"{url}/v1/model"))
        return int(info["input_size"]["height"]), int(info["input_size"]["width"])
    except Exception as exc:
        raise ConfigError(f"cannot reach {url}/v1/model ({first_line(exc)}); is the server running?") from exc


def loadtest(url: str, images: str | Path, *, concurrency: Sequence[int] = (1, 8, 64), per_request: int = 1,
             seconds: float = 5.0, warmup_s: float = 1.0, payload: str = "image",
             processes: int | None = None) -> list[LevelResult]:
    """Measure every concurrency level in turn (see the module doc); the server must be up.

    ``processes``: client processes (default :func:`default_processes`, never more than a level's C)."""
    url = url.rstrip("/")
    check_reachable(url)
    if seconds <= 0 or warmup_s < 0:
        raise ConfigError(f"--seconds must be > 0 and --warmup >= 0, got {seconds} and {warmup_s}")
    if processes is not None and processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {processes}")
    if not concurrency or min(concurrency) < 1:
        raise ConfigError(f"--concurrency levels must be >= 1, got {list(concurrency)}")
    size = model_size(url) if payload == "npy" else None
    requests = encode_requests(url, build_bodies(image_paths(images), per_request, payload, size))
    return [run_level(url, requests, c, per_request, seconds, warmup_s, processes) for c in concurrency]
