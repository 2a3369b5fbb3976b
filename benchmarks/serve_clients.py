"""Servers and clients of `benchmarks/serve.py`: start/stop a server process, measure one cell with wrk or loadtest.

A cell is one request kind (its pre-encoded bodies) at one concurrency. ``wrk`` (closed loop, C connections,
its threads = the load generator's processes) gets the same bodies through a Lua script that formats every
request once in ``init``; :func:`foldedcnns.serving.loadtest.run_level` gets them pre-encoded. Both report
answered (2xx) requests per second, p50/p95/p99 latency and the client's own CPU (cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foldedcnns.serving.loadtest import encode_requests, run_level

WRK_LUA = """
local files = {%(files)s}
local kind = "%(kind)s"
local requests = {}
local i = 0
init = function(args)
  for n, path in ipairs(files) do
    local f = io.open(path, "rb"); local body = f:read("*all"); f:close()
    requests[n] = wrk.format("POST", "%(path)s", {["Content-Type"] = kind}, body)
  end
end
request = function()
  i = i %% #requests + 1
  return requests[i]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_JSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"status_errors\\": %%d, "
    .. "\\"socket_errors\\": %%d, \\"p50_us\\": %%d, \\"p95_us\\": %%d, \\"p99_us\\": %%d, \\"max_us\\": %%d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(cmd: list[str], health_url: str, timeout: float, log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session (output to ``log``) and wait until ``health_url`` answers 200."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(health_url, timeout=2) as answer:
            if answer.status == 200:
                return proc
        time.sleep(0.3)
    stop_server(proc)
    raise SystemExit(f"server did not start ({' '.join(cmd[:6])} ...):\n" + log.read_text()[-3000:])


def stop_server(proc: subprocess.Popen) -> int | None:
    """SIGTERM, then SIGKILL whatever is left of its process group (Ray's and LitServe's workers)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=30)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_wrk(url: str, bodies: Sequence[tuple[bytes, str]], concurrency: int, seconds: float,
                warmup_s: float, threads: int) -> dict[str, Any]:
    """One wrk run of ``seconds`` (whole seconds, at least 1) after an unmeasured one of ``warmup_s``."""
    with tempfile.TemporaryDirectory(prefix="fcnn-wrk-") as work:
        files = []
        for i, (body, _) in enumerate(bodies):
            files.append(Path(work) / f"body{i}")
            files[-1].write_bytes(body)
        script = Path(work) / "post.lua"
        script.write_text(WRK_LUA % {"files": ", ".join(f'"{f}"' for f in files), "kind": bodies[0][1],
                                     "path": "/v1/predict"})
        threads = max(1, min(threads, concurrency))

        def run(duration: float) -> tuple[str, float]:
            cmd = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency",
                   "-s", str(script), url]
            cpu = _children_cpu()
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, check=True).stdout
            return out, _children_cpu() - cpu

        if warmup_s >= 0.5:
            run(warmup_s)
        out, cpu_s = run(seconds)
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    found = json.loads(line[len("WRK_JSON "):])
    wall = found["duration_us"] / 1e6
    ok = found["requests"] - found["status_errors"]
    return {"requests_per_s": ok / wall, "p50_ms": found["p50_us"] / 1000, "p95_ms": found["p95_us"] / 1000,
            "p99_ms": found["p99_us"] / 1000, "max_ms": found["max_us"] / 1000, "ok": ok,
            "errors": found["status_errors"] + found["socket_errors"], "client_cpu_cores": cpu_s / wall,
            "client_saturated": cpu_s / wall > 0.9 * threads, "seconds": wall}


def measure_loadtest(url: str, bodies: Sequence[tuple[bytes, str]], concurrency: int, per_request: int,
                     seconds: float, warmup_s: float, processes: int) -> dict[str, Any]:
    level = run_level(url, encode_requests(url, bodies), concurrency, per_request, seconds, warmup_s, processes)
    ok = level.statuses.get("200", 0)
    return {"requests_per_s": level.requests_per_s, "p50_ms": level.p50_ms, "p95_ms": level.p95_ms,
            "p99_ms": level.p99_ms, "max_ms": level.max_ms, "ok": ok, "errors": level.requests - ok,
            "client_cpu_cores": level.client_cpu_cores, "client_saturated": level.client_saturated,
            "seconds": seconds, "batch_images": level.server.get("batch_images")}
