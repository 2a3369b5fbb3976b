"""Hostile connections against a real `foldedcnns serve` process on loopback (issue 25, items 2, 3 and 9).

One server with small limits (--header-timeout-s 1, --body-timeout-s 0.5, --max-connections 10) takes the
connection tests in turn; the drain test has a server of its own, since it ends it. Raw sockets play the
clients no HTTP library would be: one that stops sending, one that hangs up mid-body, fifty that connect
and say nothing. Every socket and process is closed; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import serve_process
from PIL import Image
from serve_process import Server

from foldedcnns.errors import ConfigError
from foldedcnns.serving.connections import ConnectionLimits, Gate, bind_socket, timed_chunks
from foldedcnns.serving.decode import read_body
from foldedcnns.serving.errors import ClientDisconnected, RequestTimeout, ShuttingDown
from foldedcnns.serving.transport import HeadWithBody, join_head_and_body

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

TASK = "lol/goldnumber-fraction"
HEAD = ("POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: {n}\r\n\r\n")


def serving(checkpoint: Path, *args: str, timeout: float = 90.0) -> contextlib.AbstractContextManager[Server]:
    """``foldedcnns serve CKPT --port 0 --threads 1 ARGS`` for the block (benchmarks/serve_process.py); killed after."""
    return serve_process.serving(checkpoint, *args, timeout=timeout, fail=pytest.fail)


def read_answer(sock: socket.socket, limit: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit`` seconds pass)."""
    sock.settimeout(limit)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((22, 52, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint(4, task=TASK)


@pytest.fixture(scope="module")
def strict_server(checkpoint: Path) -> Iterator[Server]:
    with serving(checkpoint, "--header-timeout-s", "1", "--body-timeout-s", "0.5", "--max-connections", "10",
                 "--max-delay-ms", "0") as server:
        yield server


@pytest.mark.slow  # a real server process
def test_a_client_that_hangs_up_mid_upload_is_a_499_not_a_500(strict_server):
    for _ in range(5):
        with strict_server.connect() as sock:
            sock.sendall(HEAD.format(n=100_000).encode() + b"x" * 1000)
            time.sleep(0.05)
    deadline = time.monotonic() + 10
    while strict_server.metric('foldedcnns_requests_total{status="499"}') < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert strict_server.metric('foldedcnns_requests_total{status="499"}') == 5
    assert strict_server.metric('foldedcnns_requests_total{status="500"}') == 0
    response = httpx.post(f"{strict_server.url}/v1/predict", content=png(), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    assert "Traceback" not in strict_server.output()


@pytest.mark.slow  # a real server process
def test_stalled_bodies_get_408_in_one_log_line_and_a_stalled_head_is_cut(strict_server):
    before = strict_server.metric('foldedcnns_requests_total{status="408"}')
    with strict_server.connect() as body1, strict_server.connect() as body2, strict_server.connect() as body3, \
            strict_server.connect() as stalled_head, strict_server.connect() as silent:
        for stalled_body in (body1, body2, body3):
            stalled_body.sendall(HEAD.format(n=1000).encode() + b"x" * 10)  # then nothing: --body-timeout-s 0.5
        stalled_head.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: te")  # --header-timeout-s 1
        answers = [read_answer(s, 10) for s in (body1, body2, body3, stalled_head, silent)]
    assert all(a.startswith(b"HTTP/1.1 408 ") and b"--body-timeout-s" in a for a in answers[:3])
    assert answers[3].startswith(b"HTTP/1.1 408 ") and b"--header-timeout-s" in answers[3]
    assert answers[4] == b""  # said nothing: closed without an answer
    assert strict_server.metric('foldedcnns_requests_total{status="408"}') == before + 3
    assert strict_server.metric('foldedcnns_connections_cut_total{reason="header_timeout"}') >= 1
    output = strict_server.output()
    # one log line for the three 408s (at most one every 10 s), not one each: a flood of them cannot flood the log
    assert output.count("--body-timeout-s") == 1 and "Traceback" not in output


@pytest.mark.slow  # a real server process
def test_idle_connections_past_the_cap_are_refused_and_a_normal_request_gets_through(strict_server):
    sockets = []
    try:
        for _ in range(50):
            sockets.append(strict_server.connect())
        start = time.monotonic()
        answers = [read_answer(s, 5) for s in sockets]  # the refused at once, the held ones at the head timeout
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
        assert len(refused) >= 40 and all(b"retry-after: 1" in a for a in refused)
        assert all(a == b"" for a in answers if a not in refused)  # the held ones: closed, said nothing
        assert time.monotonic() - start < 5  # none waited for the read limit: all were refused or cut
        statuses = []
        for _ in range(50):  # the cap is free again: a normal request is answered
            r = httpx.post(f"{strict_server.url}/v1/predict", content=png(), headers={"content-type": "image/png"})
            statuses.append(r.status_code)
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
    finally:
        for sock in sockets:
            sock.close()
    assert strict_server.metric("foldedcnns_connections_refused_total") >= 40


@pytest.mark.slow  # a real server process
def test_a_second_server_on_a_used_port_is_one_line_and_exit_1(strict_server, checkpoint):
    out = subprocess.run([sys.executable, "-m", "foldedcnns.cli.main", "serve", str(checkpoint), "--port",
                          str(strict_server.port)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert out.stderr.splitlines() == [f"foldedcnns: error: port {strict_server.port} on 127.0.0.1 is in use; "
                                       "stop the server that holds it or choose another --port (0 picks a free one)"]


@pytest.mark.slow  # a real server process
def test_sigterm_with_a_stalled_upload_answers_every_request_and_exits_0(checkpoint):
    drain_s = 2.0
    with serving(checkpoint, "--drain-timeout-s", str(drain_s), "--body-timeout-s", "60") as server, \
            server.connect() as stalled:
        stalled.sendall(HEAD.format(n=1000).encode() + b"x" * 10)  # never finished
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/readyz").json().get("inflight") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        while httpx.get(f"{server.url}/readyz").status_code != 503 and time.monotonic() < signalled + drain_s:
            time.sleep(0.02)  # the drain has begun: from now on every prediction gets 503

        async def hammer() -> tuple[list[httpx.Response], list[Exception]]:
            """Clients that keep sending (a new connection each) until the server is gone."""
            answers: list[httpx.Response] = []
            errors: list[Exception] = []

            async def client() -> None:
                async with httpx.AsyncClient(timeout=10) as http:
                    while server.proc.poll() is None and time.monotonic() < signalled + drain_s + 10:
                        try:
                            answers.append(await http.post(f"{server.url}/v1/predict", content=png(),
                                                           headers={"content-type": "image/png"}))
                        except httpx.ConnectError:  # the listener is closed: nothing reached the process
                            await asyncio.sleep(0.02)
                        except httpx.HTTPError as exc:  # a request the process took and dropped
                            errors.append(exc)
                        await asyncio.sleep(0.01)

            await asyncio.gather(*(client() for _ in range(4)))
            return answers, errors

        answers, errors = asyncio.run(hammer())
        code = server.proc.wait(timeout=drain_s + 20)
        elapsed = time.monotonic() - signalled
        cut = read_answer(stalled, 5)
        output = server.output()
    assert code == 0, output
    assert elapsed < drain_s + 5, output
    assert cut.startswith(b"HTTP/1.1 503 ") and b"retry-after" in cut.lower()
    assert answers and all(r.status_code == 503 and "retry-after" in r.headers for r in answers), \
        [(r.status_code, r.text) for r in answers if r.status_code != 503]
    assert errors == [], errors
    assert "Traceback" not in output and "drained, every accepted request answered" in output


# Fast checks of the pieces, in process.

def test_limits_must_be_positive_and_the_cap_follows_the_open_file_limit():
    with pytest.raises(ConfigError, match="--body-timeout-s must be positive"):
        ConnectionLimits(body_timeout_s=0)
    assert ConnectionLimits(max_connections=5).cap() == 5
    resource = pytest.importorskip("resource")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        assert ConnectionLimits(max_connections=10**9).cap() == soft - 64


def test_bind_socket_names_a_used_port():
    with bind_socket("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        with pytest.raises(ConfigError, match=f"^port {port} on 127.0.0.1 is in use; "):
            bind_socket("127.0.0.1", port)


def test_a_body_that_stalls_is_cut_and_a_drain_cuts_it_at_once():
    async def stalling():
        yield b"ab"
        await asyncio.sleep(30)
        yield b"never"

    async def scenario() -> tuple[Exception, Exception, float, int]:
        gate = Gate()
        with pytest.raises(RequestTimeout, match="--body-timeout-s") as stalled:
            await read_body(timed_chunks(stalling(), ConnectionLimits(body_timeout_s=0.05), gate), 100)
        reading = asyncio.ensure_future(read_body(timed_chunks(stalling(), ConnectionLimits(), gate), 100))
        await asyncio.sleep(0.05)
        start = time.monotonic()
        assert gate.cut_uploads() == 1
        with pytest.raises(ShuttingDown, match="--drain-timeout-s") as cut:
            await reading
        return stalled.value, cut.value, time.monotonic() - start, len(gate.uploads)

    stalled, cut, seconds, left = asyncio.run(scenario())
    assert stalled.status == 408 and cut.status == 503 and cut.retry_after
    assert seconds < 5 and left == 0  # cut at once, not at the 10 s body timeout; nothing left registered


def test_a_client_disconnect_while_reading_is_499():
    requests = pytest.importorskip("starlette.requests")

    async def leaving():
        yield b"ab"
        raise requests.ClientDisconnect()

    with pytest.raises(ClientDisconnected) as left:
        asyncio.run(read_body(leaving(), 100))
    assert left.value.status == 499


class _Recorder:
    """A transport that records its writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_response_head_goes_out_with_its_body_in_one_write():
    transport = _Recorder()
    joined = HeadWithBody(transport)
    joined.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.writes == []
    joined.write(b"{}")
    joined.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")  # the next response on the connection: held again
    assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    joined.close()  # a head still held is written before the transport closes
    assert transport.writes[-1] == b"HTTP/1.1 503 Service Unavailable\r\n\r\n"
    assert transport.closed and joined.is_closing()


def test_100_continue_is_never_held_and_a_cycle_is_wrapped_once():
    transport = _Recorder()
    joined = HeadWithBody(transport)
    joined.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it before sending its body
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle = type("Cycle", (), {"transport": transport})()
    join_head_and_body(cycle)
    join_head_and_body(cycle)
    join_head_and_body(None)  # no request yet on the connection
    assert isinstance(cycle.transport, HeadWithBody) and cycle.transport.transport is transport


@pytest.mark.slow  # a real server process
def test_the_server_answers_in_one_segment(strict_server):
    """On loopback with TCP_NODELAY, two writes are two segments: the first recv could hold the head alone."""
    body = png()
    with strict_server.connect() as sock:
        sock.settimeout(10)
        sock.sendall(HEAD.format(n=len(body)).encode() + body)
        first = sock.recv(65536)
    head, _, rest = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest.startswith(b'{"predictions"'), first
