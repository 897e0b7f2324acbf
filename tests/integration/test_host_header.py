"""RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host; otherwise 400, never proxied."""

from __future__ import annotations

import pytest
from harness import Gateway, GatewayFactory, RawConn, UpstreamProcess


@pytest.fixture
def gw(gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    return gateway({"demo": demo.url})


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/echo/x HTTP/1.1\r\n\r\n",
        b"GET /api/echo/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        b"GET /api/echo/x HTTP/1.0\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
    ],
    ids=["1.1 without Host", "two Hosts", "two Hosts in 1.0"],
)
def test_missing_or_repeated_host_is_400(gw: Gateway, head: bytes) -> None:
    with RawConn(gw.port) as c:
        c.send(head)
        r = c.read_response()
    assert r.status == 400
    assert r.json()["error"] == "bad_request"


def test_http10_without_host_is_proxied(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.send(b"GET /api/echo/x HTTP/1.0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    assert r.json()["path"] == "/api/echo/x"
