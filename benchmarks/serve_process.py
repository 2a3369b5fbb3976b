"""A ``foldedcnns serve`` process on a free loopback port, for the serving benchmarks and the server tests.

``with serving(CKPT, "--max-delay-ms", "0") as server:`` starts ``foldedcnns serve CKPT --port 0 --threads 1
ARGS``, waits for its address line and yields a :class:`Server`; when the block ends the process is stopped
(``stop="kill"``, or ``"term"``: SIGTERM, then a kill after 10 s). Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import io
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

READY = re.compile(r"on http://([\d.]+):(\d+)")


class Server:
    """The running process (``proc``) at ``url`` (``host``, ``port``); ``output()`` is all it printed so far."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, lines: queue.Queue, seen: list[str]) -> None:
        self.proc, self.host, self.port, self._lines, self.seen = proc, host, port, lines, seen
        self.url = f"http://{host}:{port}"

    def output(self) -> str:
        while not self._lines.empty():
            self.seen.append(self._lines.get())
        return "".join(self.seen)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def metric(self, name: str) -> float:
        """The value of one sample line of /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0


@contextlib.contextmanager
def serving(checkpoint: Path, *args: str, timeout: float = 90.0, fail: Callable[[str], Any] = SystemExit,
            stop: str = "kill") -> Iterator[Server]:
    """Run ``foldedcnns serve CKPT --port 0 --threads 1 ARGS`` until the block ends; ``fail(message)`` is raised
    or called when it does not start within ``timeout`` seconds."""
    cmd = [sys.executable, "-m", "foldedcnns.cli.main", "serve", str(checkpoint), "--port", "0", "--threads", "1",
           *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.2))
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            match = READY.search(seen[-1])
            if match:
                yield Server(proc, match.group(1), int(match.group(2)), lines, seen)
                return
        raise fail(f"the server did not start: {''.join(seen)[-2000:]}")
    finally:
        if proc.poll() is None and stop == "term":
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def npy_bytes(images: Any) -> bytes:
    """A NumPy array as an ``application/x-npy`` request body."""
    buffer = io.BytesIO()
    np.save(buffer, images)
    return buffer.getvalue()


async def one_chunk(body: bytes) -> AsyncIterator[bytes]:
    """``body`` as the request stream of one chunk (what ``decode_request`` reads)."""
    yield body
