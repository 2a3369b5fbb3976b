"""Hostile case: many slow uploads against a server with few file descriptors (issue 25, case 5).

Opens ``--connections`` connections that each send a request head and two body bytes, then stall; meanwhile
sends one normal PNG request every 0.25 s and prints when it is first answered 200 (and what came before).
Start the server yourself under a low open-file limit, e.g.::

    (ulimit -n 256; foldedcnns serve CKPT --port 18735 --body-timeout-s 3 --header-timeout-s 3) &
    python benchmarks/serve_fd_limit.py 18735
"""

from __future__ import annotations

import argparse
import io
import socket
import time

import httpx
import numpy as np
from PIL import Image

STALLED_HEAD = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\nab"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0, help="give up after this long")
    args = parser.parse_args()
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((22, 52, 3), np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    stalled = []
    for _ in range(args.connections):
        try:
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=5)
            sock.sendall(STALLED_HEAD)
            stalled.append(sock)
        except OSError as exc:
            print(f"connection {len(stalled)} refused: {exc}")
            break
    started, answers = time.monotonic(), []
    while time.monotonic() - started < args.seconds:
        try:
            status = httpx.post(f"http://127.0.0.1:{args.port}/v1/predict", content=png,
                                headers={"content-type": "image/png"}, timeout=5).status_code
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        answers.append((round(time.monotonic() - started, 2), status))
        if status == 200:
            break
        time.sleep(0.25)
    print(f"{len(stalled)} stalled connections; normal requests (seconds, status): first {answers[:5]}, "
          f"last {answers[-3:]}, {len(answers)} in all")
    for sock in stalled:
        sock.close()


if __name__ == "__main__":
    main()
