"""Ray Serve path: `foldedcnns serve CKPT --ray` on a local 2-CPU Ray answers the native server's labels."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serve_clients import stop_server

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("ray.serve", reason="needs ray[serve]")

TASK = "lol/goldnumber-fraction"
READY = re.compile(r"^foldedcnns: serving .*(http://[\d.]+:\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(args: list[str], timeout: float) -> Iterator[tuple[subprocess.Popen, str, queue.Queue]]:
    """Run `foldedcnns serve ARGS` in a session of its own; yield once it prints its address; then SIGTERM,
    and kill its whole process group (Ray's raylet and workers included) if anything is left."""
    proc = subprocess.Popen([sys.executable, "-m", "foldedcnns.cli.main", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.5))
                match = READY.search(seen[-1])
                if match:
                    yield proc, match.group(1), lines
                    return
        pytest.fail("server did not start:\n" + "".join(seen[-30:]))
    finally:
        stop_server(proc)  # SIGTERM, then SIGKILL what is left of its process group (Ray's workers)


def answers(url: str, bodies: list[bytes]) -> list[tuple[int, float]]:
    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(client.post(f"{url}/v1/predict", content=b,
                                                      headers={"content-type": "image/png"}) for b in bodies))

    responses = asyncio.run(send())
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    return [(r.json()["predictions"][0]["label"], r.json()["predictions"][0]["score"]) for r in responses]


@pytest.mark.slow
def test_ray_serve_answers_the_native_servers_labels(tmp_path: Path, tiny_checkpoint, image_files):
    checkpoint = tiny_checkpoint(1, task=TASK)  # f = 1: an answer does not depend on how requests are batched
    image_files(tmp_path / "in", [f"{i:02d}.png" for i in range(24)], size=(22, 52))
    bodies = [p.read_bytes() for p in sorted((tmp_path / "in").glob("*.png"))]
    with serving([str(checkpoint), "--port", "0", "--threads", "1"], timeout=90) as (_, url, _lines):
        native = answers(url, bodies)
        native_bad = httpx.post(f"{url}/v1/predict", content=b"x", headers={"content-type": "text/plain"})
    port = free_port()
    with serving([str(checkpoint), "--ray", "--ray-cpus", "2", "--port", str(port), "--max-delay-ms", "20"],
                 timeout=240) as (proc, url, _lines):
        served = answers(url, bodies)
        info = httpx.get(f"{url}/v1/model").json()
        bad = httpx.post(f"{url}/v1/predict", content=b"x", headers={"content-type": "text/plain"})
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert [label for label, _ in served] == [label for label, _ in native]
    np.testing.assert_allclose([s for _, s in served], [s for _, s in native], atol=1e-5)  # each its own answer
    assert info["fold"] == 1 and info["batcher"]["ray_serve"] is True
    assert bad.status_code == native_bad.status_code == 415 and bad.json()["error"] == native_bad.json()["error"]
    assert code == 0
