"""Hostile requests against `foldedcnns serve` on loopback: what a decompression bomb costs the server and its
other clients.

    .venv/bin/python benchmarks/serve_hostile.py                          # under a minute on 2 cores
    .venv/bin/python benchmarks/serve_hostile.py --trials 1               # a few seconds: a quick look

It starts ``foldedcnns serve`` on a seeded lol/goldnumber-fraction f = 4 checkpoint (eager fp32 on the
CPU, one model thread, the server's default limits) and runs ``--trials`` interleaved trials of:

* ``bomb``: one ``--side`` x ``--side`` 1-bit PNG, all zeros (a few KB; the default 13000 is issue 25's
  169-megapixel image): the time to its answer, its status, and the server's peak RSS growth over the
  request (``VmHWM`` after a reset through ``/proc/PID/clear_refs``, less ``VmRSS`` before);
* ``bomb x4 multipart``: four such images as the file parts of one multipart body;
* ``npy 10^12``: an ``.npy`` header declaring 10^12 uint8 elements, without the data;
* ``normal``: one small PNG alone, and one sent while two bomb requests are in flight (the time to its
  answer, sent a few ms after the bombs).

It prints the medians as a table (``--json``: the raw trials too). Linux only (``/proc``); needs
``pip install 'foldedcnns[serve]'``. Issue 25's targets: the bomb answered 4xx in < 100 ms with < 50 MB
of RSS growth; the normal request under two bombs in < 100 ms. ``tests/test_serving_hostile_requests.py``
uses the helpers below on a real server too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import serve_process
from PIL import Image
from serve_process import Server

TASK = "lol/goldnumber-fraction"
NPY_10_12 = (333_334, 1000, 1000, 3)  # an .npy shape of about 10^12 uint8 elements


# -- hostile bodies -------------------------------------------------------------------------------------------

def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(side: int = 13000) -> bytes:
    """A ``side`` x ``side`` 1-bit PNG of zeros: a few KB (about 20 KB at 13000) declaring ``side**2`` pixels."""
    return png_bytes(Image.new("1", (side, side), 0))


def normal_png(height: int = 22, width: int = 52, seed: int = 0) -> bytes:
    """A small RGB PNG of noise at the model's input size."""
    rng = np.random.default_rng(seed)
    return png_bytes(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """The ``.npy`` header (format 1.0) of an array of ``shape``, without its data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def multipart(parts: list[bytes], boundary: str = "foldedcnnsboundary") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one PNG file part per item, and its content type."""
    chunks = []
    for i, part in enumerate(parts):
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image{i}"; filename="{i}.png"\r\n'
                      f"Content-Type: image/png\r\n\r\n".encode() + part + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


# -- talking to the server ------------------------------------------------------------------------------------

def raw_post(url: str, body: bytes = b"", content_type: str = "image/png", *, headers: dict[str, str] | None = None,
             content_length: int | None = None, pause_s: float = 0.0, timeout: float = 10.0
             ) -> tuple[int, dict[str, str], bytes]:
    """``POST /v1/predict`` over a plain socket: the headers (``Content-Length``: ``content_length``, default the
    body's), a pause of ``pause_s``, then the body (as much as the server takes). Returns the status, the
    response headers (lower-case names) and the response body; ``socket.timeout`` when no answer comes."""
    parts = urlsplit(url)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if content_length is None else content_length}\r\n{extra}\r\n").encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head)
        if pause_s:
            time.sleep(pause_s)
        if body:
            with contextlib.suppress(OSError):  # the server may answer and close before taking it all
                sock.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"the server closed the connection without an answer: {data!r}")
            data += chunk
        head_bytes, rest = data.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        found = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(found.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), found, rest


def status_of(proc_pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in bytes (Linux ``/proc``)."""
    fields = {}
    with open(f"/proc/{proc_pid}/status", encoding="ascii") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


@contextlib.contextmanager
def peak_rss_growth(pid: int) -> Iterator[dict[str, int]]:
    """Measure the peak RSS growth of process ``pid`` over the ``with`` block: ``out["growth"]`` in bytes.

    Resets the peak (``VmHWM``) through ``/proc/PID/clear_refs`` where allowed, else samples ``VmRSS``
    every 2 ms in a thread (a short spike may then be missed)."""
    out: dict[str, int] = {}
    before = status_of(pid)["VmRSS"]
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        sampled = None
    except OSError:
        sampled, stop = [before], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    sampled.append(status_of(pid)["VmRSS"])
                time.sleep(0.002)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
    try:
        yield out
    finally:
        if sampled is None:
            peak = status_of(pid)["VmHWM"]
        else:
            stop.set()
            thread.join()
            peak = max(sampled)
        out["growth"] = max(0, peak - before)


def serving(checkpoint: Path, *args: str, timeout: float = 90.0,
            fail: Callable[[str], Any] = SystemExit) -> contextlib.AbstractContextManager[Server]:
    """:func:`serve_process.serving`, stopped by SIGTERM (then a kill after 10 s) as a user would stop it."""
    return serve_process.serving(checkpoint, *args, timeout=timeout, fail=fail, stop="term")


def make_checkpoint(path: Path, fold: int = 4, seed: int = 0) -> Path:
    """A seeded lol/goldnumber-fraction checkpoint at ``fold`` (what the figures measure does not depend on it)."""
    import torch

    from foldedcnns.models import build_model
    from foldedcnns.runtime.checkpoint import make_checkpoint as checkpoint_of
    from foldedcnns.runtime.checkpoint import save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(TASK, fold=fold)
    return save_checkpoint(path, checkpoint_of(model))


# -- the measurements -----------------------------------------------------------------------------------------

def timed(call: Callable[[], tuple[int, dict[str, str], bytes]]) -> tuple[float, int]:
    start = time.perf_counter()
    status, _, _ = call()
    return time.perf_counter() - start, status


def under_bombs(url: str, bomb: bytes, normal: bytes, lead_s: float = 0.005) -> tuple[float, int, list[int]]:
    """A normal request sent ``lead_s`` after two bomb requests: its latency and status, and the bombs' statuses."""
    async def scenario() -> tuple[float, int, list[int]]:
        loop = asyncio.get_running_loop()
        bombs = [loop.run_in_executor(None, lambda: raw_post(url, bomb, timeout=120)) for _ in range(2)]
        await asyncio.sleep(lead_s)
        seconds, status = await loop.run_in_executor(None, lambda: timed(lambda: raw_post(url, normal, timeout=120)))
        return seconds, status, [s for s, _, _ in await asyncio.gather(*bombs)]

    return asyncio.run(scenario())


def trial(server: Server, bomb: bytes, normal: bytes) -> dict[str, Any]:
    pid, url = server.proc.pid, server.url
    row: dict[str, Any] = {}
    with peak_rss_growth(pid) as rss:
        row["bomb_s"], row["bomb_status"] = timed(lambda: raw_post(url, bomb, timeout=120))
    row["bomb_rss_mb"] = rss["growth"] / 2**20
    body, kind = multipart([bomb] * 4)
    with peak_rss_growth(pid) as rss:
        row["multipart_s"], row["multipart_status"] = timed(lambda: raw_post(url, body, kind, timeout=120))
    row["multipart_rss_mb"] = rss["growth"] / 2**20
    header = npy_header(NPY_10_12)
    row["npy_s"], row["npy_status"] = timed(lambda: raw_post(url, header, "application/x-npy", timeout=120))
    row["normal_s"], row["normal_status"] = timed(lambda: raw_post(url, normal, timeout=120))
    row["under_bombs_s"], row["under_bombs_status"], statuses = under_bombs(url, bomb, normal)
    row["under_bombs_bomb_statuses"] = statuses
    return row


def table(rows: list[dict[str, Any]], side: int) -> str:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def statuses(key: str) -> str:
        return "/".join(sorted({str(r[key]) for r in rows}))

    lines = [f"| request ({len(rows)} trials, medians) | status | time to answer (ms) | server peak RSS growth (MB) |",
             "|---|---|---|---|",
             f"| bomb: {side}x{side} 1-bit PNG | {statuses('bomb_status')} | {1000 * med('bomb_s'):.1f} | "
             f"{med('bomb_rss_mb'):.1f} |",
             f"| 4 bomb parts, one multipart body | {statuses('multipart_status')} | {1000 * med('multipart_s'):.1f} | "
             f"{med('multipart_rss_mb'):.1f} |",
             f"| .npy header declaring 10^12 elements | {statuses('npy_status')} | {1000 * med('npy_s'):.1f} | |",
             f"| normal 52x22 PNG, alone | {statuses('normal_status')} | {1000 * med('normal_s'):.1f} | |",
             f"| normal 52x22 PNG, two bombs in flight | {statuses('under_bombs_status')} | "
             f"{1000 * med('under_bombs_s'):.1f} | |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="interleaved trials (default: 5)")
    parser.add_argument("--side", type=int, default=13000, help="the bomb's width and height (default: 13000)")
    parser.add_argument("--json", type=Path, default=None, help="write the trials and medians here")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for 'foldedcnns serve' (repeatable; e.g. --serve-arg=--max-delay-ms=0)")
    args = parser.parse_args()
    bomb, normal = bomb_png(args.side), normal_png()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(Path(tmp) / "f4.pt")
        with serving(checkpoint, *args.serve_arg) as server:
            for _ in range(3):  # warm up: the first requests pay for imports and the first batch
                raw_post(server.url, normal)
            rows = [trial(server, bomb, normal) for _ in range(args.trials)]
            log = server.output()
    print(f"bomb: {len(bomb):,} bytes declaring {args.side}x{args.side}; server: foldedcnns serve "
          f"{' '.join(args.serve_arg) or '(defaults)'}")
    print(table(rows, args.side))
    tracebacks = log.count("Traceback")
    print(f"tracebacks in the server's log: {tracebacks}")
    if args.json is not None:
        args.json.write_text(json.dumps({"side": args.side, "bomb_bytes": len(bomb), "trials": rows,
                                         "tracebacks": tracebacks}, indent=2))


if __name__ == "__main__":
    main()
