"""What a client sees when the upstream fails: refused, slow, unreachable, broken mid-way.

Refused and broken before a response → 502 JSON; too slow (headers or connect) → 504 JSON
within about the configured timeout; broken after the response started → the client's
connection is cut, never completed as if the body were whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import (
    HOST,
    Conn,
    Gateway,
    GatewayFactory,
    IncompleteResponse,
    RawConn,
    ScriptedUpstream,
    UpRequest,
    free_port,
)

UPSTREAM_TIMEOUT = 0.5
SLACK = 0.75  # scheduling slack on a loaded 2-core machine


async def misbehave(req: UpRequest, conn: Conn) -> bool:
    path = req.path
    if path.startswith("/sleep/"):
        await asyncio.sleep(float(path.rsplit("/", 1)[1]))
        await conn.respond(200, b"late")
    elif path == "/reset-before-response":
        conn.reset()
    elif path == "/close-before-response":
        conn.close()
    elif path == "/garbage":
        conn.writer.write(b"SPEAKING SOMETHING ELSE\r\n\r\n")
        await conn.writer.drain()
        conn.close()
    elif path == "/reset-mid-body":
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10_000)
        await conn.writer.drain()
        await asyncio.sleep(0.1)
        conn.reset()
    elif path == "/reset-mid-chunked":
        conn.writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"2710\r\n" + b"x" * 10_000 + b"\r\n"
        )
        await conn.writer.drain()
        await asyncio.sleep(0.1)
        conn.reset()
    elif path == "/close-mid-body":
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10_000)
        await conn.writer.drain()
        await asyncio.sleep(0.1)
        conn.close()
    elif path == "/stall-mid-body":
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 10_000)
        await conn.writer.drain()
        await asyncio.sleep(10)
    else:
        await conn.respond(200, b"ok")
    return not conn.closed


@pytest.fixture
def upstream(scripted: Callable[..., ScriptedUpstream]) -> ScriptedUpstream:
    return scripted(misbehave)


@pytest.fixture
def gw(gateway: GatewayFactory, upstream: ScriptedUpstream) -> Gateway:
    return gateway({"up": {"base_url": upstream.url, "timeout_secs": UPSTREAM_TIMEOUT}})


def get(gw: Gateway, path: str) -> tuple[Any, float]:
    t0 = time.monotonic()
    with RawConn(gw.port) as c:
        c.request("GET", path)
        r = c.read_response()
    return r, time.monotonic() - t0


def assert_json_error(r: Any, status: int, code: str) -> None:
    assert r.status == status, (r.status, r.body)
    assert r.header("content-type") == "application/json"
    body = r.json()
    assert body["error"] == code
    assert body["message"]
    assert body["correlation_id"] == r.header("x-request-id")
    assert "Traceback" not in r.body.decode()


def test_connection_refused_is_502(gateway: GatewayFactory) -> None:
    gw = gateway({"nowhere": f"http://{HOST}:{free_port()}"})
    r, elapsed = get(gw, "/anything")
    assert_json_error(r, 502, "upstream_unavailable")
    assert elapsed < 2


def test_slow_upstream_is_504_within_its_timeout(gw: Gateway) -> None:
    r, elapsed = get(gw, "/sleep/3")
    assert_json_error(r, 504, "upstream_timeout")
    assert UPSTREAM_TIMEOUT - 0.05 <= elapsed < UPSTREAM_TIMEOUT + SLACK


def test_slow_upstream_after_an_upload_is_504(gw: Gateway) -> None:
    # The upstream's clock starts when the body is all sent.
    t0 = time.monotonic()
    with RawConn(gw.port) as c:
        c.request("POST", "/sleep/3", body=b"u" * 200_000)
        r = c.read_response()
    assert_json_error(r, 504, "upstream_timeout")
    assert UPSTREAM_TIMEOUT - 0.05 <= time.monotonic() - t0 < UPSTREAM_TIMEOUT + SLACK


def test_slow_upstream_on_a_pooled_connection_is_504_too(gw: Gateway, upstream: ScriptedUpstream) -> None:
    # The first request leaves an idle keep-alive connection; the slow one reuses it
    # (the gateway's fast path, which has its own deadline bookkeeping).
    with RawConn(gw.port) as c:
        c.request("GET", "/fast")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        c.request("GET", "/sleep/3")
        r = c.read_response()
        elapsed = time.monotonic() - t0
    assert_json_error(r, 504, "upstream_timeout")
    assert elapsed < UPSTREAM_TIMEOUT + SLACK
    assert upstream.connections == 1
    # And the gateway still works afterwards.
    r, _ = get(gw, "/fast")
    assert r.status == 200


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: SYNs are dropped, connect() hangs."""
    srv = socket.socket()
    fill: list[socket.socket] = []
    try:
        srv.bind((HOST, 0))
        srv.listen(0)
        port = int(srv.getsockname()[1])
        for _ in range(4):
            s = socket.socket()
            fill.append(s)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect((HOST, port))
        probe = socket.socket()
        fill.append(probe)
        probe.settimeout(0.3)
        with pytest.raises(TimeoutError):
            probe.connect((HOST, port))
        yield port
    finally:
        for s in fill:
            s.close()
        srv.close()


def test_connect_timeout_is_504(gateway: GatewayFactory, blackhole: int) -> None:
    gw = gateway(
        {"hole": {"base_url": f"http://{HOST}:{blackhole}", "connect_timeout_secs": 0.5, "timeout_secs": 10}}
    )
    r, elapsed = get(gw, "/x")
    assert_json_error(r, 504, "upstream_timeout")
    assert 0.45 <= elapsed < 0.5 + SLACK


@pytest.mark.parametrize("path", ["/reset-before-response", "/close-before-response"])
def test_upstream_dying_before_a_response_is_502(gw: Gateway, path: str) -> None:
    r, _ = get(gw, path)
    assert_json_error(r, 502, "upstream_unavailable")


def test_garbage_from_upstream_is_502(gw: Gateway) -> None:
    r, _ = get(gw, "/garbage")
    assert_json_error(r, 502, "bad_gateway")


@pytest.mark.parametrize("path", ["/reset-mid-body", "/reset-mid-chunked", "/close-mid-body"])
@pytest.mark.parametrize("pooled", [False, True], ids=["new-connection", "pooled-connection"])
def test_upstream_breaking_mid_response_cuts_the_client_connection(
    gw: Gateway, path: str, pooled: bool
) -> None:
    with RawConn(gw.port) as c:
        if pooled:  # the gateway's task-free fast path runs on a pooled connection
            c.request("GET", "/fast")
            assert c.read_response().status == 200
        c.request("GET", path)
        with pytest.raises(IncompleteResponse) as e:
            c.read_response()
    partial = e.value.partial
    assert partial is not None
    assert partial.status == 200  # the head had been forwarded already
    assert 0 < partial.body_size < 1_000_000
    # Still serving others.
    r, _ = get(gw, "/fast")
    assert r.status == 200


def test_upstream_stalling_mid_body_cuts_the_client_after_its_timeout(gw: Gateway) -> None:
    t0 = time.monotonic()
    with RawConn(gw.port) as c:
        c.request("GET", "/stall-mid-body")
        with pytest.raises(IncompleteResponse):
            c.read_response()
    assert time.monotonic() - t0 < UPSTREAM_TIMEOUT + SLACK + 0.5


def test_upstream_answering_early_during_an_upload_never_leaves_the_client_hanging(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """The upstream rejects a large upload from its head alone and closes (as many servers
    do with 401/413). The client must hear back promptly — the upstream's answer, or a 502
    when the upstream's reset destroyed it — not wait for a timeout."""

    async def reject_early(req: UpRequest, conn: Conn) -> bool:
        await conn.respond(403, b"denied", [("Connection", "close")])
        conn.close()
        return False

    up = scripted(reject_early, read_body=False)
    gw = gateway({"up": up.url}, server={"request_timeout_secs": 30})
    size = 8 * 1024 * 1024
    for _ in range(6):
        t0 = time.monotonic()
        with RawConn(gw.port, timeout=5) as c:
            c.send(f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode())
            with contextlib.suppress(ConnectionError):
                c.send(b"a" * size)  # the gateway may stop reading and reset: fine
            try:
                status: int | None = c.read_response().status
            except IncompleteResponse:
                status = None  # reset before any answer could be read
        assert status in (403, 502, None)
        assert time.monotonic() - t0 < 3
    assert "Traceback" not in gw.stderr(), gw.stderr()
