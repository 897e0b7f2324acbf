"""`server.*` settings as a client meets them: port, connection cap, idle and request
timeouts, header and body size limits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
from harness import (
    APIGATE,
    HOST,
    Conn,
    Gateway,
    GatewayFactory,
    MiB,
    RawConn,
    Response,
    ScriptedUpstream,
    UpRequest,
    UpstreamProcess,
    free_port,
    wait_until,
)

SLACK = 0.75  # scheduling slack on a loaded 2-core machine


def assert_error(r: Response, status: int, code: str) -> None:
    assert r.status == status, (r.status, r.body)
    assert r.header("content-type") == "application/json"
    assert r.json()["error"] == code


# ----------------------------------------------------------------------------- bind
def test_listens_on_the_configured_address_and_port(gateway: GatewayFactory, demo: UpstreamProcess) -> None:
    port = free_port()
    gw = gateway({"demo": demo.url}, server={"bind_address": HOST, "port": port})
    assert gw.port == port
    with RawConn(port) as c:
        c.request("GET", "/api/users/1")
        assert c.read_response().json()["id"] == 1


def test_port_in_use_is_a_clear_startup_error(gateway: GatewayFactory, demo: UpstreamProcess) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        gw = gateway({"demo": demo.url}, server={"port": busy.getsockname()[1]}, start=False)
        out = subprocess.run(
            [str(APIGATE), "serve", "--config", str(gw.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "in use" in out.stderr, out.stderr


# ----------------------------------------------------------------------------- max_connections
def test_connections_beyond_max_connections_get_503_and_close(
    gateway: GatewayFactory, demo: UpstreamProcess
) -> None:
    gw = gateway({"demo": demo.url}, server={"max_connections": 3})
    conns = [RawConn(gw.port) for _ in range(3)]
    try:
        for c in conns:  # each one is really accepted and counted
            c.request("GET", "/api/echo/held")
            assert c.read_response().status == 200
        with RawConn(gw.port) as extra:
            r = extra.read_response()
            assert_error(r, 503, "overloaded")
            assert r.header("connection") == "close"
            assert extra.closed_by_peer(2)
        # The ones inside the limit still work.
        conns[0].request("GET", "/api/echo/still")
        assert conns[0].read_response().status == 200
        # A slot freed is a slot usable again.
        conns.pop().close()

        def accepted() -> bool:
            with RawConn(gw.port) as c:
                c.request("GET", "/api/echo/again")
                return c.read_response().status == 200

        assert wait_until(accepted, 5, interval=0.05)
    finally:
        for c in conns:
            c.close()


# ----------------------------------------------------------------------------- connection_timeout_secs
def test_idle_keep_alive_connection_is_closed(gateway: GatewayFactory, demo: UpstreamProcess) -> None:
    gw = gateway({"demo": demo.url}, server={"connection_timeout_secs": 1})
    with RawConn(gw.port) as c:
        # Activity keeps it open past the idle timeout...
        for i in range(4):
            if i:
                time.sleep(0.4)
            c.request("GET", "/api/echo/active")
            assert c.read_response().status == 200
        # ...idleness closes it.
        t0 = time.monotonic()
        assert c.closed_by_peer(5)
        assert 0.9 <= time.monotonic() - t0 < 1 + SLACK


def test_connection_that_never_sends_is_closed(gateway: GatewayFactory, demo: UpstreamProcess) -> None:
    gw = gateway({"demo": demo.url}, server={"connection_timeout_secs": 1})
    with RawConn(gw.port) as c:
        t0 = time.monotonic()
        assert c.closed_by_peer(5)
        assert time.monotonic() - t0 < 1 + SLACK


# ----------------------------------------------------------------------------- request_timeout_secs
async def sleepy(req: UpRequest, conn: Conn) -> bool:
    if req.path.startswith("/sleep/"):
        await asyncio.sleep(float(req.path.rsplit("/", 1)[1]))
    await conn.respond(200, b"done")
    return True


@pytest.fixture
def gw_rt(gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]) -> Gateway:
    up = scripted(sleepy)
    return gateway(
        {"up": {"base_url": up.url, "timeout_secs": 10}},
        server={"request_timeout_secs": 1, "connection_timeout_secs": 30},
    )


def timed(c: RawConn) -> tuple[Response, float]:
    t0 = time.monotonic()
    r = c.read_response()
    return r, time.monotonic() - t0


def test_client_stalling_in_its_headers_gets_408(gw_rt: Gateway) -> None:
    with RawConn(gw_rt.port) as c:
        c.send(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Half: ")
        r, elapsed = timed(c)
        assert_error(r, 408, "request_timeout")
        assert elapsed < 1 + SLACK
        assert c.closed_by_peer(2)


def test_client_stalling_in_its_body_gets_408(gw_rt: Gateway) -> None:
    with RawConn(gw_rt.port) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"b" * 50)
        r, elapsed = timed(c)
        assert_error(r, 408, "request_timeout")
        assert r.json()["correlation_id"] == r.header("x-request-id")
        assert elapsed < 1 + SLACK
        assert c.closed_by_peer(2)


def test_late_upstream_within_its_own_timeout_still_gets_504_at_request_timeout(gw_rt: Gateway) -> None:
    with RawConn(gw_rt.port) as c:
        c.request("GET", "/sleep/3")
        r, elapsed = timed(c)
    assert_error(r, 504, "upstream_timeout")
    assert 0.95 <= elapsed < 1 + SLACK


def test_slow_upload_is_bounded_by_request_timeout_not_the_upstream_timeout(
    gateway: GatewayFactory, demo: UpstreamProcess
) -> None:
    """`timeout_secs` is the upstream's time to answer; a client uploading for longer than
    that (but within request_timeout_secs) must not be cut off."""
    gw = gateway(
        {"demo": {"base_url": demo.url, "timeout_secs": 0.5}},
        server={"request_timeout_secs": 10, "connection_timeout_secs": 0.5},
    )
    with RawConn(gw.port) as c:
        c.send(b"POST /api/echo/slow-upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        for _ in range(5):
            time.sleep(0.4)
            c.send(b"x")
        r = c.read_response()
    assert r.status == 200, r.body
    assert r.json()["body_length"] == 5


def test_slow_but_complete_request_is_not_cut(gw_rt: Gateway) -> None:
    # Half a second per request, two on one connection: each gets its own deadline.
    with RawConn(gw_rt.port) as c:
        for _ in range(2):
            c.request("GET", "/sleep/0.6")
            assert c.read_response().body == b"done"


# ----------------------------------------------------------------------------- size limits
@pytest.fixture(scope="module")
def gw_small(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    return module_gateway({"demo": demo.url}, server={"max_header_bytes": 1024, "max_body_bytes": 1000})


def test_headers_over_max_header_bytes_get_431(gw_small: Gateway) -> None:
    with RawConn(gw_small.port) as c:
        c.request("GET", "/api/echo/h", {"X-Big": "a" * 2000})
        r = c.read_response()
        assert_error(r, 431, "headers_too_large")
        assert c.closed_by_peer(2)
    # Many small headers count too, and so does a long target.
    with RawConn(gw_small.port) as c:
        c.request("GET", "/api/echo/h", {f"X-H{i}": "v" * 30 for i in range(40)})
        assert_error(c.read_response(), 431, "headers_too_large")
    with RawConn(gw_small.port) as c:
        c.request("GET", "/api/echo/" + "p" * 1500)
        assert_error(c.read_response(), 431, "headers_too_large")


def test_headers_under_max_header_bytes_pass(gw_small: Gateway) -> None:
    with RawConn(gw_small.port) as c:
        c.request("GET", "/api/echo/h", {"X-Fits": "a" * 700})
        r = c.read_response()
    assert r.status == 200
    assert r.json()["headers"]["x-fits"] == "a" * 700


def test_head_split_across_reads_is_measured_by_its_own_size(
    gateway: GatewayFactory, demo: UpstreamProcess
) -> None:
    """The header limit counts header bytes once, whatever the TCP segmentation: a head
    that arrives in pieces (with its body right behind it) is not mistaken for a big one."""
    gw = gateway({"demo": demo.url}, server={"max_header_bytes": 32768})
    # The end of the head and 40 KB of body in one read.
    with RawConn(gw.port) as c:
        c.send(b"POST /api/echo/split HTTP/1.1\r\nHost: t\r\n")
        time.sleep(0.05)
        c.send(b"Content-Length: 40000\r\n\r\n" + b"b" * 40000)
        r = c.read_response()
        assert r.status == 200, r.body
        assert r.json()["body_length"] == 40000
    # 20 KB of headers (under the 32 KB limit) trickled in 1 KB pieces.
    head = b"GET /api/echo/trickle HTTP/1.1\r\nHost: t\r\n"
    head += b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 990) for i in range(20)) + b"\r\n"
    with RawConn(gw.port) as c:
        for i in range(0, len(head), 1000):
            c.send(head[i : i + 1000])
            time.sleep(0.005)
        r = c.read_response()
        assert r.status == 200, r.body
        assert r.json()["headers"]["x-h19"] == "v" * 990
    # Over the limit in pieces is still 431.
    with RawConn(gw.port) as c:
        c.send(b"GET /api/echo/big HTTP/1.1\r\nHost: t\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(40):
                c.send(b"X-H%d: %s\r\n" % (i, b"v" * 990))
                time.sleep(0.002)
        assert_error(c.read_response(), 431, "headers_too_large")
    # So is one header that never ends (the parser only reports complete headers).
    with RawConn(gw.port) as c:
        c.send(b"GET /api/echo/endless HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(200):
                c.send(b"a" * 1000)
                time.sleep(0.002)
        assert_error(c.read_response(), 431, "headers_too_large")


def test_declared_body_over_max_body_bytes_gets_413_before_it_is_sent(gw_small: Gateway) -> None:
    with RawConn(gw_small.port) as c:
        c.send(b"POST /api/echo/b HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
        r = c.read_response()
        assert_error(r, 413, "payload_too_large")
        assert c.closed_by_peer(2)


def test_chunked_body_growing_past_max_body_bytes_gets_413(gw_small: Gateway) -> None:
    with RawConn(gw_small.port) as c:
        c.send(b"POST /api/echo/b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(b"258\r\n" + b"c" * 600 + b"\r\n")
        time.sleep(0.1)  # the first 600 bytes are fine and already on their way upstream
        c.send(b"258\r\n" + b"c" * 600 + b"\r\n")
        r = c.read_response()
        assert_error(r, 413, "payload_too_large")
        assert c.closed_by_peer(2)


def test_body_at_max_body_bytes_passes(gw_small: Gateway) -> None:
    with RawConn(gw_small.port) as c:
        c.request("POST", "/api/echo/b", body=b"d" * 1000)
        assert c.read_response().json()["body_length"] == 1000
        c.send(b"POST /api/echo/b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(b"3e8\r\n" + b"e" * 1000 + b"\r\n0\r\n\r\n")
        assert c.read_response().json()["body_length"] == 1000


def _upload_while_reading(
    port: int, head: bytes, body_size: int, pace: float = 0.0
) -> tuple[Response, BaseException | None]:
    """Send `head` and a body of `body_size` bytes from a thread, as clients do (the whole
    request first), while this thread reads the answer that comes early."""
    sent: list[BaseException | None] = [None]
    with RawConn(port, timeout=15) as c:

        def upload() -> None:
            try:
                c.send(head)
                chunk = b"u" * 65536
                for _ in range(body_size // len(chunk)):
                    c.send(chunk)
                    time.sleep(pace)
            except OSError as e:
                sent[0] = e

        t = threading.Thread(target=upload, daemon=True)
        t.start()
        r = c.read_response()
        t.join(20)
        assert c.closed_by_peer(15)
    return r, sent[0]


def test_413_reaches_a_client_that_keeps_sending_its_body(gw_small: Gateway) -> None:
    # Answered after the head; the client still pushes 8 MiB. Lingering close: the gateway
    # half-closes and discards the rest instead of resetting the connection, which could
    # destroy the 413 before the client reads it.
    size = 8 * MiB
    head = b"POST /api/echo/big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size
    r, err = _upload_while_reading(gw_small.port, head, size)
    assert_error(r, 413, "payload_too_large")
    assert err is None, f"the upload was reset: {err!r}"


def test_upstream_answer_before_the_upload_ends_reaches_the_client(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    async def deny(req: UpRequest, conn: Conn) -> bool:
        await conn.respond(401, b'{"error":"no"}', [("Content-Type", "application/json")])
        # Then drain what the gateway still sends (a careful upstream lingers too), and close.
        while await conn.reader.read(65536):
            pass
        return False

    up = scripted(deny, read_body=False)
    gw = gateway({"up": up.url})
    size = 8 * MiB
    head = b"PUT /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size
    # Paced so that most of the body is still to come when the answer arrives.
    r, err = _upload_while_reading(gw.port, head, size, pace=0.005)
    assert r.status == 401
    assert r.body == b'{"error":"no"}'
    assert err is None, f"the upload was reset: {err!r}"
