"""Bodies stream through the gateway both ways, with backpressure and a bounded memory.

The 1 GiB transfers are generated and checked on the fly (a 1 MiB pattern repeated and
hashed); the gateway's peak RSS (VmHWM) must stay under 100 MiB. Upstreams for the big
transfers run in their own processes so the test's client does not share a GIL with them.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Callable

import pytest
from harness import (
    HOST,
    Conn,
    Gateway,
    GatewayFactory,
    GiB,
    MiB,
    RawConn,
    ScriptedUpstream,
    UpRequest,
    UpstreamProcess,
    echo_handler,
    pattern_chunks,
    pattern_sha256,
    wait_until,
)

RSS_LIMIT_KIB = 100 * 1024


@pytest.fixture
def gw_demo(gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    return gateway({"demo": {"base_url": demo.url, "timeout_secs": 60}}, server={"request_timeout_secs": 120})


@pytest.fixture
def gw_stream(gateway: GatewayFactory, stream_upstream: UpstreamProcess) -> Gateway:
    return gateway(
        {"stream": {"base_url": stream_upstream.url, "timeout_secs": 60}},
        server={"request_timeout_secs": 120},
    )


def upload(gw: Gateway, size: int, *, chunked: bool, chunk: int = MiB) -> tuple[dict[str, object], str]:
    """POST `size` pattern bytes to the demo echo; returns (echo, expected sha256)."""
    h = hashlib.sha256()
    with RawConn(gw.port, timeout=60) as c:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        c.send(f"POST /api/echo/upload HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n".encode())
        for piece in pattern_chunks(size, chunk):
            h.update(piece)
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            c.send(b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200, r.body
    echo: dict[str, object] = r.json()
    return echo, h.hexdigest()


def download(gw: Gateway, size: int, *, chunked: bool) -> tuple[str, int, str]:
    """GET `size` bytes; returns (sha256 of the body, its length, the framing used)."""
    h = hashlib.sha256()
    with RawConn(gw.port, timeout=60) as c:
        c.request("GET", f"/bytes/{size}" + ("?chunked=1" if chunked else ""))
        r = c.read_response(sink=h.update)
    assert r.status == 200
    return h.hexdigest(), r.body_size, r.framing


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_1gib_upload_streams_with_bounded_memory(gw_demo: Gateway, chunked: bool) -> None:
    t0 = time.monotonic()
    echo, sha = upload(gw_demo, GiB, chunked=chunked)
    assert echo["body_length"] == GiB
    assert echo["body_sha256"] == sha
    hwm = gw_demo.vm_hwm_kib()
    assert hwm < RSS_LIMIT_KIB, f"gateway peak RSS {hwm} KiB"
    print(f"1 GiB upload in {time.monotonic() - t0:.1f} s, gateway VmHWM {hwm // 1024} MiB")


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_1gib_download_streams_with_bounded_memory(gw_stream: Gateway, chunked: bool) -> None:
    t0 = time.monotonic()
    sha, size, framing = download(gw_stream, GiB, chunked=chunked)
    assert framing == ("chunked" if chunked else "length")
    assert size == GiB
    assert sha == pattern_sha256(GiB)
    hwm = gw_stream.vm_hwm_kib()
    assert hwm < RSS_LIMIT_KIB, f"gateway peak RSS {hwm} KiB"
    print(f"1 GiB download in {time.monotonic() - t0:.1f} s, gateway VmHWM {hwm // 1024} MiB")


def test_chunked_upload_reaches_upstream_whole(gw_demo: Gateway) -> None:
    size = 16 * MiB + 12345
    echo, sha = upload(gw_demo, size, chunked=True, chunk=100_000)
    assert echo["body_length"] == size
    assert echo["body_sha256"] == sha
    # The upstream got it chunked too (the length was unknown when forwarding began).
    headers = echo["headers"]
    assert isinstance(headers, dict)
    assert headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in headers


def test_content_length_upload_keeps_its_length(gw_demo: Gateway) -> None:
    size = 3 * MiB + 7
    echo, sha = upload(gw_demo, size, chunked=False, chunk=65536)
    assert echo["body_sha256"] == sha
    headers = echo["headers"]
    assert isinstance(headers, dict)
    assert headers.get("content-length") == str(size)
    assert "transfer-encoding" not in headers


def test_chunked_download_reaches_client_whole(gw_stream: Gateway) -> None:
    size = 16 * MiB + 54321
    sha, got, framing = download(gw_stream, size, chunked=True)
    assert framing == "chunked"
    assert got == size
    assert sha == pattern_sha256(size)


def test_content_length_download_keeps_its_length(gw_stream: Gateway) -> None:
    sha, got, framing = download(gw_stream, 5 * MiB + 3, chunked=False)
    assert framing == "length"
    assert got == 5 * MiB + 3
    assert sha == pattern_sha256(5 * MiB + 3)


def test_upload_is_not_buffered_when_the_upstream_does_not_read(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """An upstream that stops reading must stall the client's upload (backpressure): the
    gateway takes in at most its 64 KiB buffer plus what the sockets hold, not 512 MiB."""
    release = asyncio.Event()

    async def no_reader(req: UpRequest, conn: Conn) -> bool:
        await release.wait()
        return False

    up = scripted(no_reader, read_body=False)
    gw = gateway({"up": {"base_url": up.url, "timeout_secs": 60}}, server={"request_timeout_secs": 60})
    size = 512 * MiB
    sent = 0
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        s.sendall(f"PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode())
        s.setblocking(False)
        chunks = pattern_chunks(size, 256 * 1024)
        piece = next(chunks)
        stalled_since = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                n = s.send(piece)
            except BlockingIOError:
                n = 0
            if n:
                sent += n
                piece = piece[n:] or next(chunks, b"")
                if not piece:
                    break  # everything went in: nothing held the client back
                stalled_since = None
            else:
                # Stalled: done once nothing moved for a while.
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1.0:
                    break
                time.sleep(0.01)
        hwm = gw.vm_hwm_kib()
        up.loop.call_soon_threadsafe(release.set)
    assert len(up.requests_to("/sink")) == 1  # the head was forwarded right away
    assert sent < 96 * MiB, f"the gateway accepted {sent // MiB} MiB from a client nobody reads from"
    assert hwm < RSS_LIMIT_KIB


def test_download_is_not_buffered_when_the_client_does_not_read(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """A client that stops reading must stall the upstream (backpressure): the upstream
    manages to send only about what the sockets hold, and the gateway's memory stays flat."""
    conns: list[Conn] = []

    async def big(req: UpRequest, conn: Conn) -> bool:
        conns.append(conn)
        await conn.stream(GiB, chunked=False)
        return True

    up = scripted(big)
    gw = gateway({"up": {"base_url": up.url, "timeout_secs": 60}}, server={"request_timeout_secs": 60})
    with socket.create_connection((HOST, gw.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        assert wait_until(lambda: bool(conns) and conns[0].sent > 0, 10)

        # Wait until the upstream's sending stops moving.
        def settled() -> bool:
            before = conns[0].sent
            time.sleep(0.5)
            return conns[0].sent == before

        assert wait_until(settled, 20, interval=0)
        sent = conns[0].sent
        hwm = gw.vm_hwm_kib()
    assert sent < 96 * MiB, f"the upstream pushed {sent // MiB} MiB to a client that reads nothing"
    assert hwm < RSS_LIMIT_KIB


# ----------------------------------------------------------------------------- clients that leave
def test_client_leaving_mid_download_stops_the_upstream_transfer(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    conns: list[Conn] = []

    async def big(req: UpRequest, conn: Conn) -> bool:
        conns.append(conn)
        await conn.stream(GiB, chunked=req.path == "/chunked")
        return True

    up = scripted(big)
    gw = gateway({"up": {"base_url": up.url, "timeout_secs": 60}})
    for path in ("/length", "/chunked"):
        with RawConn(gw.port) as c:
            c.request("GET", path)
            c.read_head()
            while len(c.buf) < MiB and c._fill():
                pass
        # The gateway closes its upstream connection: the upstream's writes fail soon,
        # instead of 1 GiB being pulled through for nobody.
        conn = conns[-1]
        assert wait_until(lambda conn=conn: conn.closed or conn.writer.transport.is_closing(), 10)
        assert conn.sent < 256 * MiB
    with RawConn(gw.port) as c:
        c.request("GET", "/small-after")
        c.read_head()


def test_client_leaving_mid_upload_closes_the_upstream_connection(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """A half-sent body must not be completed or reused: the upstream sees its connection
    end (not a request finished with someone else's bytes)."""
    up = scripted(echo_handler)
    gw = gateway({"up": {"base_url": up.url, "timeout_secs": 60}})
    with RawConn(gw.port) as c:
        c.send(f"PUT /half HTTP/1.1\r\nHost: t\r\nContent-Length: {10 * MiB}\r\n\r\n".encode())
        c.send(b"h" * MiB)
        assert wait_until(lambda: up.connections == 1, 5)
    assert wait_until(lambda: all(conn.closed for conn in up.conns), 10)
    assert up.requests_to("/half") == []  # never completed
    # The next request gets a clean connection and a clean answer.
    with RawConn(gw.port) as c:
        c.request("POST", "/after", body=b"fresh")
        r = c.read_response()
    assert r.status == 200
    assert r.json()["body_length"] == 5


def test_steady_download_longer_than_the_upstream_timeout_is_not_cut(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    """`timeout_secs` bounds the upstream's silences, not the length of a body: a
    download that never pauses for long streams to the end however long it takes."""

    async def trickle(req: UpRequest, conn: Conn) -> bool:
        conn.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n")
        for _ in range(20):  # 4 s in all, never silent for more than 0.2 s
            conn.writer.write(b"t" * 1000)
            await conn.writer.drain()
            await asyncio.sleep(0.2)
        return True

    up = scripted(trickle)
    gw = gateway({"up": {"base_url": up.url, "timeout_secs": 1}}, server={"request_timeout_secs": 2})
    with RawConn(gw.port) as c:
        c.request("GET", "/trickle")
        r = c.read_response()
    assert r.status == 200
    assert r.body == b"t" * 20000
