"""HTTP/1.x connection handling: keep-alive both sides, pipelining, HTTP/1.0, 100-continue."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    Conn,
    Gateway,
    GatewayFactory,
    MiB,
    RawConn,
    ScriptedUpstream,
    UpRequest,
    UpstreamProcess,
    pattern_sha256,
    require_tool,
)


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    routes = [{"id": "api", "path": "/api/*", "upstream_id": "demo"}]
    return module_gateway({"demo": demo.url}, routes, server={"max_body_bytes": 4 * MiB})


# ----------------------------------------------------------------------------- keep-alive
def test_one_client_connection_serves_many_requests(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        for i in range(50):
            c.request("GET", f"/api/echo/ka/{i}")
            r = c.read_response()
            assert r.status == 200
            assert r.json()["path"] == f"/api/echo/ka/{i}"
            assert r.header("connection") is None  # HTTP/1.1: persistent by default
        c.request("POST", "/api/echo/ka/post", body=b"x" * 1000)
        assert c.read_response().json()["body_length"] == 1000
        c.request("GET", "/nope")  # an error reply keeps the connection too
        assert c.read_response().status == 404
        c.request("GET", "/api/echo/ka/last")
        assert c.read_response().status == 200


def test_upstream_connections_are_pooled(gw: Gateway) -> None:
    # The demo echo reports the gateway's end of the upstream connection.
    with RawConn(gw.port) as c:
        peers = set()
        for _ in range(10):
            c.request("GET", "/api/echo/pool")
            peers.add(c.read_response().json()["client"])
    assert len(peers) == 1


def test_pool_max_idle_zero_means_no_reuse(gateway: GatewayFactory, demo: UpstreamProcess) -> None:
    gw = gateway({"demo": {"base_url": demo.url, "pool_max_idle_per_host": 0}})
    with RawConn(gw.port) as c:
        peers = set()
        for _ in range(5):
            c.request("GET", "/api/echo/nopool")
            peers.add(c.read_response().json()["client"])
    assert len(peers) == 5


def test_connection_close_is_honoured(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.request("GET", "/api/echo/bye", {"Connection": "close"})
        r = c.read_response()
        assert r.status == 200
        assert r.header("connection") == "close"
        assert c.closed_by_peer(2)


# ----------------------------------------------------------------------------- pipelining
def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.send(
            b"GET /api/echo/p1 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /api/echo/p2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /api/echo/p3?x=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        responses = [c.read_response() for _ in range(3)]
        assert c.closed_by_peer(2)
    assert [r.status for r in responses] == [200, 200, 200]
    echoes = [r.json() for r in responses]
    assert [e["path"] for e in echoes] == ["/api/echo/p1", "/api/echo/p2", "/api/echo/p3"]
    assert echoes[1]["body_length"] == 5
    assert echoes[2]["query"] == "x=3"
    assert responses[2].header("connection") == "close"
    ids = {r.header("x-request-id") for r in responses}
    assert len(ids) == 3


def test_pipelined_answers_wait_for_a_slow_first_one(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    async def handler(req: UpRequest, conn: Conn) -> bool:
        if req.path == "/slow":
            await asyncio.sleep(0.5)
        await conn.respond(200, req.path.encode())
        return True

    up = scripted(handler)
    gw = gateway({"up": up.url})
    with RawConn(gw.port) as c:
        c.send(b"".join(f"GET /{p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in ("slow", "fast", "404x")))
        bodies = [c.read_response().body for _ in range(3)]
    assert bodies == [b"/slow", b"/fast", b"/404x"]


def test_many_pipelined_requests(gw: Gateway) -> None:
    n = 100  # more than the gateway queues before it pauses reading
    with RawConn(gw.port) as c:
        c.send(b"".join(f"GET /api/echo/m/{i} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for i in range(n)))
        paths = [c.read_response().json()["path"] for _ in range(n)]
    assert paths == [f"/api/echo/m/{i}" for i in range(n)]


# ----------------------------------------------------------------------------- HTTP/1.0
def test_http10_without_keep_alive_gets_close(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.send(b"GET /api/echo/old HTTP/1.0\r\nHost: t\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.json()["path"] == "/api/echo/old"
        assert r.header("connection") == "close"
        assert c.closed_by_peer(2)


# Old clients and proxies ask with Proxy-Connection, which llhttp honours like Connection.
@pytest.mark.parametrize("ask", ["Connection", "Proxy-Connection"])
def test_http10_keep_alive_when_asked(gw: Gateway, ask: str) -> None:
    with RawConn(gw.port) as c:
        for i in range(3):
            c.send(f"GET /api/echo/old/{i} HTTP/1.0\r\n{ask}: keep-alive\r\n\r\n".encode())
            r = c.read_response()
            assert r.status == 200
            assert r.header("connection") == "keep-alive"
            assert r.json()["path"] == f"/api/echo/old/{i}"


@pytest.fixture
def gw_stream(gateway: GatewayFactory, stream_upstream: UpstreamProcess) -> Gateway:
    return gateway({"stream": stream_upstream.url})


@pytest.mark.parametrize("extra", ["", "Connection: keep-alive\r\n", "Proxy-Connection: keep-alive\r\n"])
def test_http10_never_gets_chunked(gw_stream: Gateway, extra: str) -> None:
    # The upstream answers chunked; a 1.0 client cannot parse that, so the body is
    # sent as is and ends with the connection (RFC 9112 §6.3), even if keep-alive was asked.
    size = 3 * MiB + 1
    with RawConn(gw_stream.port) as c:
        c.send(f"GET /bytes/{size}?chunked=1 HTTP/1.0\r\n{extra}\r\n".encode())
        h = hashlib.sha256()
        r = c.read_response(sink=h.update)
    assert r.status == 200
    assert r.all("transfer-encoding") == []
    assert r.framing == "close"
    assert r.header("connection") == "close"
    assert r.body_size == size
    assert h.hexdigest() == pattern_sha256(size)


def test_http10_post_with_content_length(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.send(b"POST /api/echo/old HTTP/1.0\r\nContent-Length: 4\r\n\r\nabcd")
        r = c.read_response()
    assert r.json()["body_length"] == 4


# ----------------------------------------------------------------------------- 100-continue
def test_expect_100_continue_is_answered_by_the_gateway(gw: Gateway) -> None:
    body = b"q" * 100_000
    with RawConn(gw.port) as c:
        c.send(
            b"POST /api/echo/expect HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = c.read_response(interim=True)
        assert interim.status == 100
        c.send(body)
        r = c.read_response()
    assert r.status == 200
    echo = r.json()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert "expect" not in echo["headers"]  # the gateway answered it; the upstream is not asked


def test_expect_100_continue_is_not_sent_for_a_rejected_request(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.send(b"POST /no-route HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
        r = c.read_response(interim=True)
    assert r.status == 404  # no route, no "100 Continue": the client need not send the body
    assert r.json()["error"] == "not_found"

    with RawConn(gw.port) as c:
        c.send(
            f"POST /api/echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: {8 * MiB}\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        r = c.read_response(interim=True)
    assert r.status == 413


def test_curl_upload_with_expect_100_continue(gw: Gateway, tmp_path: Path) -> None:
    curl = require_tool("curl")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"c" * (2 * MiB))
    t0 = time.monotonic()
    out = subprocess.run(
        [curl, "-sS", "--fail", "-H", "Expect: 100-continue", "--expect100-timeout", "5",
         "--data-binary", f"@{payload}", f"{gw.url}/api/echo/curl"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    echo = json.loads(out.stdout)
    assert echo["body_length"] == 2 * MiB
    assert echo["body_sha256"] == hashlib.sha256(payload.read_bytes()).hexdigest()
    # curl would wait out --expect100-timeout (5 s) if the gateway never said "continue".
    assert elapsed < 3
    assert shutil.which(curl)


# ----------------------------------------------------------------------------- response framings
async def framings(req: UpRequest, conn: Conn) -> bool:
    if req.path == "/204":
        conn.writer.write(b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n")
    elif req.path == "/304":
        conn.writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
    elif req.path == "/until-close":
        # No Content-Length, no chunked: the body ends when the upstream closes (RFC 9112 §6.3).
        conn.writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"u" * 100_000)
        await conn.writer.drain()
        conn.close()
        return False
    elif req.path == "/head-chunked" and req.method == "HEAD":
        # What many servers answer to HEAD: the GET's framing headers, no body.
        conn.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    elif req.path == "/head-length" and req.method == "HEAD":
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
    else:
        await conn.respond(200, b"plain")
    await conn.writer.drain()
    return True


@pytest.fixture
def gw_framings(gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]) -> Gateway:
    return gateway({"up": scripted(framings).url})


def test_bodyless_statuses_and_head_keep_the_connection_usable(gw_framings: Gateway) -> None:
    with RawConn(gw_framings.port) as c:
        for method, path, status in [
            ("GET", "/204", 204),
            ("GET", "/304", 304),
            ("HEAD", "/head-chunked", 200),
            ("HEAD", "/head-length", 200),
            ("GET", "/plain", 200),
        ]:
            c.request(method, path)
            r = c.read_response(method)
            assert r.status == status, path
            assert r.body == (b"plain" if path == "/plain" else b"")
            if path == "/head-length":
                assert r.header("content-length") == "12345"  # HEAD reports the GET's length
            if status in (204, 304):
                assert r.all("transfer-encoding") == []
        c.request("GET", "/plain")
        assert c.read_response().body == b"plain"


def test_body_delimited_by_upstream_close_is_forwarded_whole(gw_framings: Gateway) -> None:
    with RawConn(gw_framings.port) as c:
        for _ in range(2):  # to an HTTP/1.1 client it is re-framed, so keep-alive survives
            c.request("GET", "/until-close")
            r = c.read_response()
            assert r.status == 200
            assert r.framing == "chunked"
            assert r.body == b"u" * 100_000


# ----------------------------------------------------------------------------- odds and ends
def test_client_half_close_still_gets_its_answer(gw: Gateway) -> None:
    # `shutdown(SHUT_WR)` after the request (nc -N, some scripts): answer, then close.
    with RawConn(gw.port) as c:
        c.send(b"GET /api/echo/half HTTP/1.1\r\nHost: t\r\n\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response()
        assert r.status == 200
        assert r.json()["path"] == "/api/echo/half"
        assert c.closed_by_peer(2)


def test_chunked_request_with_trailers(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.send(
            b"POST /api/echo/trailers HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"
        )
        assert c.read_response().json()["body_length"] == 5
        c.request("GET", "/api/echo/next")  # the trailer did not desynchronise the connection
        assert c.read_response().json()["path"] == "/api/echo/next"


def test_many_concurrent_clients(gw: Gateway) -> None:
    wrk = require_tool("wrk", "/usr/bin/wrk")
    out = subprocess.run(
        [wrk, "-t2", "-c256", "-d2s", "--timeout", "5s", f"{gw.url}/api/echo/concurrent"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "Non-2xx or 3xx responses" not in out.stdout, out.stdout
    assert "Socket errors" not in out.stdout, out.stdout
    assert " requests in " in out.stdout
