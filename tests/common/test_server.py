"""services.common.server: uvicorn's protocol with one send() per answer still speaks HTTP/1.1 correctly."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ROOT, free_port


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """tests.common.server_app served by uvicorn with --http services.common.server:CoalescingHttpProtocol."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "tests.common.server_app:app", "--port", str(port), "--loop", "uvloop"]
    cmd += ["--http", "services.common.server:CoalescingHttpProtocol", "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/hello", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_keep_alive_answers_stay_whole_and_in_order(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        for n in range(100):
            resp = client.post("/echo", content=f"request {n}")
            assert resp.status_code == 200
            assert resp.text == f"request {n}"
            assert resp.headers["content-length"] == str(len(f"request {n}"))


def test_large_and_streamed_answers(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        big = client.get("/big")
        assert big.status_code == 200 and len(big.content) == 1 << 20
        streamed = client.get("/stream")
        assert streamed.text == "part0;part1;part2;"
        assert streamed.headers.get("transfer-encoding") == "chunked"
        assert client.get("/hello").text == "hello"  # the connection is still good afterwards


def test_pipelined_requests_and_connection_close(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    answers = received.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == 2, received
    assert answers[0].endswith(b"\r\n\r\nhello") and answers[1].endswith(b"\r\n\r\nabc")
    assert b"connection: close" in answers[1].lower()
