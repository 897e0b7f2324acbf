"""The demo upstream over real sockets: every endpoint, keep-alive, chunked bodies, pipelining."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvloop

from apigate.demo import USERS, DemoUpstream, start_demo_upstream


class ThreadedUpstream:
    """A DemoUpstream on a free port, served by its own event loop in a background thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float | None = 75.0) -> None:
        self.loop = loop
        self.upstream = DemoUpstream("127.0.0.1", 0, idle_timeout=idle_timeout)
        self._thread = threading.Thread(target=loop.run_forever, name="demo-upstream", daemon=True)

    def __enter__(self) -> ThreadedUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.upstream.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.upstream.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def port(self) -> int:
        return self.upstream.port

    def open_connections(self) -> int:
        async def count() -> int:
            return self.upstream.open_connections

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(5)


@pytest.fixture(params=["asyncio", "uvloop"])
def demo(request: pytest.FixtureRequest) -> Iterator[ThreadedUpstream]:
    loop = asyncio.new_event_loop() if request.param == "asyncio" else uvloop.new_event_loop()
    with ThreadedUpstream(loop) as up:
        yield up


def raw_exchange(port: int, payload: bytes, *, until_close: bool = True, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            if not until_close:
                break
        return b"".join(chunks)


def split_responses(raw: bytes) -> list[tuple[str, dict[str, str], bytes]]:
    """Parse Content-Length framed HTTP/1.1 responses out of a byte stream."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        n = int(headers.get("content-length", "0"))
        out.append((lines[0], headers, rest[:n]))
        raw = rest[n:]
    return out


# ----------------------------------------------------------------------------- endpoints
def test_users_list(demo: ThreadedUpstream) -> None:
    r = httpx.get(f"{demo.url}/api/users")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    assert r.json() == USERS
    assert len(r.json()) >= 3


def test_user_by_id_and_404(demo: ThreadedUpstream) -> None:
    r = httpx.get(f"{demo.url}/api/users/2")
    assert r.status_code == 200
    assert r.json()["id"] == 2
    assert r.json()["name"]

    r = httpx.get(f"{demo.url}/api/users/999")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "not_found"
    assert "999" in r.json()["message"]


def test_unknown_path_is_json_404(demo: ThreadedUpstream) -> None:
    for path in ("/", "/nope", "/api", "/api/users/1/extra", "/api/echoes"):
        r = httpx.get(f"{demo.url}{path}")
        assert r.status_code == 404, path
        assert r.json()["error"] == "not_found"


def test_wrong_method_on_users_is_405_with_allow(demo: ThreadedUpstream) -> None:
    r = httpx.post(f"{demo.url}/api/users", content=b"{}")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert r.json()["error"] == "method_not_allowed"
    assert httpx.delete(f"{demo.url}/api/users/1").status_code == 405


def test_head_has_length_but_no_body(demo: ThreadedUpstream) -> None:
    get = httpx.get(f"{demo.url}/api/users")
    head = httpx.head(f"{demo.url}/api/users")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_echo_any_method(demo: ThreadedUpstream, method: str) -> None:
    r = httpx.request(
        method,
        f"{demo.url}/api/echo/some/path?a=1&a=2&b=x%20y",
        headers={"X-Request-ID": "req-123", "X-Forwarded-For": "10.0.0.1"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["method"] == method
    assert body["path"] == "/api/echo/some/path"
    assert body["query"] == "a=1&a=2&b=x%20y"
    assert body["args"] == {"a": ["1", "2"], "b": ["x y"]}
    assert body["headers"]["x-request-id"] == "req-123"
    assert body["headers"]["x-forwarded-for"] == "10.0.0.1"
    assert "X-Request-ID: req-123" in body["raw_headers"]
    assert body["body_length"] == 0
    assert body["http_version"] == "1.1"


def test_echo_root_and_repeated_headers(demo: ThreadedUpstream) -> None:
    r = httpx.get(f"{demo.url}/api/echo", headers=[("X-Multi", "a"), ("X-Multi", "b")])
    assert r.status_code == 200
    assert r.json()["headers"]["x-multi"] == "a, b"
    assert [h for h in r.json()["raw_headers"] if h.lower().startswith("x-multi")] == [
        "X-Multi: a",
        "X-Multi: b",
    ]


# ----------------------------------------------------------------------------- bodies
def test_content_length_post(demo: ThreadedUpstream) -> None:
    payload = os.urandom(1024 * 1024 + 7)
    r = httpx.post(f"{demo.url}/api/echo/upload", content=payload)
    body = r.json()
    assert body["headers"]["content-length"] == str(len(payload))
    assert body["body_length"] == len(payload)
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()


def test_chunked_post(demo: ThreadedUpstream) -> None:
    parts = [b"hello ", b"chunked ", os.urandom(200_000), b"world"]

    def gen() -> Iterator[bytes]:
        yield from parts

    r = httpx.post(f"{demo.url}/api/echo/chunked", content=gen())
    body = r.json()
    assert body["headers"]["transfer-encoding"] == "chunked"
    assert "content-length" not in body["headers"]
    assert body["body_length"] == sum(len(p) for p in parts)
    assert body["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_expect_100_continue(demo: ThreadedUpstream) -> None:
    with socket.create_connection(("127.0.0.1", demo.port), timeout=5) as s:
        s.sendall(
            b"POST /api/echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = s.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"abcde")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            data += s.recv(65536)
    [(status, _, body)] = split_responses(data)
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(body)["body_length"] == 5


# ----------------------------------------------------------------------------- connections
def test_keep_alive_reuses_one_connection(demo: ThreadedUpstream) -> None:
    with httpx.Client(base_url=demo.url) as client:
        peers = {client.get("/api/echo/n").json()["client"] for _ in range(5)}
        assert client.get("/api/users").status_code == 200
        assert client.get("/api/users/1").status_code == 200
        assert client.get("/api/users/404").status_code == 404  # an error keeps the connection too
        peers.add(client.get("/api/echo/n").json()["client"])
        assert len(peers) == 1
        assert demo.open_connections() == 1


def test_pipelined_requests_answered_in_order(demo: ThreadedUpstream) -> None:
    reqs = b"".join(
        f"GET {p} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        for p in ("/api/users/1", "/api/echo/second", "/api/users/3")
    )
    raw = raw_exchange(demo.port, reqs + b"GET /api/users/4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    responses = split_responses(raw)
    assert [s for s, _, _ in responses] == ["HTTP/1.1 200 OK"] * 4
    assert json.loads(responses[0][2])["id"] == 1
    assert json.loads(responses[1][2])["path"] == "/api/echo/second"
    assert json.loads(responses[2][2])["id"] == 3
    assert json.loads(responses[3][2])["id"] == 4
    assert responses[3][1]["connection"] == "close"


def test_http10_closes_unless_keep_alive_asked(demo: ThreadedUpstream) -> None:
    raw = raw_exchange(demo.port, b"GET /api/users/1 HTTP/1.0\r\n\r\n")
    [(status, headers, body)] = split_responses(raw)  # the server closed: raw_exchange returned
    assert status == "HTTP/1.1 200 OK"
    assert headers["connection"] == "close"
    assert json.loads(body)["id"] == 1

    with socket.create_connection(("127.0.0.1", demo.port), timeout=5) as s:
        for _ in range(2):
            s.sendall(b"GET /api/users/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            data = b""
            while not data.endswith(b"}\n"):
                data += s.recv(65536)
            [(status, headers, _)] = split_responses(data)
            assert headers["connection"] == "keep-alive"


def test_malformed_request_gets_400_and_close(demo: ThreadedUpstream) -> None:
    raw = raw_exchange(demo.port, b"THIS IS NOT HTTP\r\n\r\n")
    [(status, headers, body)] = split_responses(raw)
    assert status == "HTTP/1.1 400 Bad Request"
    assert headers["connection"] == "close"
    assert json.loads(body)["error"] == "bad_request"


def test_huge_headers_get_431(demo: ThreadedUpstream) -> None:
    raw = raw_exchange(
        demo.port, b"GET /api/users HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    )
    [(status, _, body)] = split_responses(raw)
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(body)["error"] == "headers_too_large"


def test_idle_connection_is_closed_after_timeout() -> None:
    with (
        ThreadedUpstream(uvloop.new_event_loop(), idle_timeout=0.2) as up,
        socket.create_connection(("127.0.0.1", up.port), timeout=5) as s,
    ):
        s.sendall(b"GET /api/users/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while not data.endswith(b"}\n"):
            data += s.recv(65536)
        t0 = time.monotonic()
        assert s.recv(1024) == b""  # EOF once idle
        assert time.monotonic() - t0 < 3


def test_stop_closes_open_connections(demo: ThreadedUpstream) -> None:
    s = socket.create_connection(("127.0.0.1", demo.port), timeout=5)
    try:
        s.sendall(b"GET /api/users/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while not data.endswith(b"}\n"):
            data += s.recv(65536)
        asyncio.run_coroutine_threadsafe(demo.upstream.stop(), demo.loop).result(5)
        assert s.recv(1024) == b""
    finally:
        s.close()


# ----------------------------------------------------------------------------- entry points
def test_start_demo_upstream_function() -> None:
    async def scenario() -> dict[str, Any]:
        server = await start_demo_upstream("127.0.0.1", 0)
        assert isinstance(server, asyncio.Server)  # the default loop's server type
        port = server.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"http://127.0.0.1:{port}/api/users/1")
                result: dict[str, Any] = r.json()
                return result
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(scenario())["id"] == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_module_main_runs_standalone_and_stops_on_sigint() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "apigate.demo.upstream", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        assert httpx.get(f"http://127.0.0.1:{port}/api/users").status_code == 200
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert "RuntimeWarning" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_module_main_reports_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "apigate.demo.upstream", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr
