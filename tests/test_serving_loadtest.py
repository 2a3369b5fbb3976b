"""`foldedcnns loadtest`'s client: pre-encoded HTTP/1.1 requests, several processes, its own CPU, saturation.

A stub server on loopback (a thread with its own event loop) answers every POST; no model, no web stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foldedcnns.cli.main import main
from foldedcnns.errors import ConfigError

lt = importlib.import_module("foldedcnns.serving.loadtest")  # the module (the package exports its function)


class Stub:
    """A loopback HTTP/1.1 server: reads each request (headers + Content-Length body), answers ``status``
    with a small JSON body (every third one chunked), keeps the connection; counts requests and bodies."""

    def __init__(self, status: int = 200) -> None:
        self.status, self.requests, self.bodies = status, 0, set()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.bodies.add(await reader.readexactly(length))
                self.requests += 1
                body = b'{"predictions":[]}'
                if self.requests % 3 == 0:
                    writer.write(f"HTTP/1.1 {self.status} X\r\ntransfer-encoding: chunked\r\n\r\n".encode()
                                 + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
                else:
                    writer.write(f"HTTP/1.1 {self.status} X\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def stub(status: int = 200) -> Iterator[Stub]:
    server = Stub(status)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pngs")
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(folder / f"{i}.png")
    return folder


def test_requests_are_encoded_once_as_complete_http_posts(pngs):
    bodies = lt.build_bodies(lt.image_paths(pngs), 1)
    requests = lt.encode_requests("http://127.0.0.1:8123/base/", bodies)
    assert len(requests) == 6
    head, _, body = requests[0].partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /base/v1/predict HTTP/1.1"
    assert b"Content-Type: image/png" in head and f"Content-Length: {len(body)}".encode() in head
    assert body == (pngs / "0.png").read_bytes()
    with pytest.raises(ConfigError, match="plain HTTP"):
        lt.encode_requests("https://example.org", bodies)


def test_several_processes_share_the_connections_and_report_their_cpu(pngs):
    requests = lt.encode_requests("http://127.0.0.1:1", lt.build_bodies(lt.image_paths(pngs), 1))
    with stub() as server:
        level = lt.run_level(server.url, requests, concurrency=5, per_request=1, seconds=0.6, warmup_s=0.2,
                             processes=2)
    assert level.processes == 2 and level.concurrency == 5
    assert set(level.statuses) == {"200"} and level.statuses["200"] == level.requests > 10
    assert server.requests >= level.requests  # the warm-up and the tail are not counted
    assert len(server.bodies) == 6            # every pre-encoded image was sent
    assert level.p50_ms is not None and level.p50_ms > 0 and level.requests_per_s > 0
    assert level.client_cpu_cores > 0 and 0 < level.client_busiest_process <= level.client_cpu_cores
    assert level.client_cores == lt.available_cores()


def test_error_statuses_are_counted_and_not_timed(pngs):
    requests = lt.encode_requests("http://127.0.0.1:1", lt.build_bodies(lt.image_paths(pngs), 2))
    with stub(503) as server:
        level = lt.run_level(server.url, requests, concurrency=2, per_request=2, seconds=0.4, warmup_s=0.1,
                             processes=1)
    assert set(level.statuses) == {"503"} and level.images == 0 and level.p50_ms is None


def test_a_saturated_client_says_its_figures_are_a_floor(pngs, monkeypatch, capsys):
    monkeypatch.setattr(lt, "SATURATED", -1.0)  # any CPU use counts as saturation
    with stub() as server:
        assert main(["loadtest", server.url, "--images", str(pngs), "--concurrency", "2", "--seconds", "0.3",
                     "--warmup", "0.1", "--processes", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    (level,) = json.loads(out)
    assert level["client_saturated"] is True and level["processes"] == 1
    assert "foldedcnns: warning: at concurrency 2 the load generator was the bottleneck" in err
    assert "a floor, not the server's ceiling" in err


def test_an_unsaturated_client_prints_no_warning_and_its_cpu_column(pngs, capsys):
    with stub() as server:
        assert main(["loadtest", server.url, "--images", str(pngs), "--concurrency", "1", "--seconds", "0.3",
                     "--warmup", "0.1"]) == 0
    out, err = capsys.readouterr()
    assert "client CPU" in out and "warning" not in err


def test_the_default_processes_leave_most_cores_to_the_server():
    assert [lt.default_processes(c) for c in (1, 2, 4, 16, 64)] == [1, 1, 1, 4, 8]


def test_an_unreachable_server_is_one_line(pngs):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(ConfigError, match=r"cannot reach http://127.0.0.1:\d+ .*is the server running\?"):
            lt.loadtest(f"http://127.0.0.1:{port}", pngs, concurrency=[1], seconds=0.1)
