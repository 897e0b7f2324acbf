"""TLS on both sides: the HTTPS listener (server.tls, min_version) and https upstreams
with certificate verification (ca_path, verify_tls)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import pytest
from harness import Gateway, GatewayFactory, RawConn, ScriptedUpstream, UpstreamProcess, echo_handler


def client_context(cafile: Any, *, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def tls_gateway(gateway: GatewayFactory, demo: UpstreamProcess, tls_files: Any, min_version: str) -> Gateway:
    tls = {"cert_path": str(tls_files.cert), "key_path": str(tls_files.key), "min_version": min_version}
    return gateway({"demo": demo.url}, server={"tls": tls})


@pytest.mark.parametrize("min_version", ["1.2", "1.3"])
def test_https_listener_serves_requests(
    gateway: GatewayFactory, demo: UpstreamProcess, tls_files: Any, min_version: str
) -> None:
    gw = tls_gateway(gateway, demo, tls_files, min_version)
    with RawConn(gw.port, ssl_context=client_context(tls_files.cert)) as c:
        assert isinstance(c.sock, ssl.SSLSocket)
        assert c.sock.version() == "TLSv1.3"
        for _ in range(2):  # keep-alive over TLS
            c.request("GET", "/api/echo/tls", {"Host": "secure.example.test"})
            r = c.read_response()
            assert r.status == 200
            echo = r.json()
            assert echo["headers"]["x-forwarded-proto"] == "https"
            assert echo["headers"]["x-forwarded-host"] == "secure.example.test"


def test_min_version_13_refuses_a_tls12_client(
    gateway: GatewayFactory, demo: UpstreamProcess, tls_files: Any
) -> None:
    gw = tls_gateway(gateway, demo, tls_files, "1.3")
    with pytest.raises(ssl.SSLError):
        RawConn(gw.port, ssl_context=client_context(tls_files.cert, max_version=ssl.TLSVersion.TLSv1_2))
    # The listener survives the failed handshake.
    with RawConn(gw.port, ssl_context=client_context(tls_files.cert)) as c:
        c.request("GET", "/api/users/1")
        assert c.read_response().status == 200


def test_min_version_12_accepts_a_tls12_client(
    gateway: GatewayFactory, demo: UpstreamProcess, tls_files: Any
) -> None:
    gw = tls_gateway(gateway, demo, tls_files, "1.2")
    ctx = client_context(tls_files.cert, max_version=ssl.TLSVersion.TLSv1_2)
    with RawConn(gw.port, ssl_context=ctx) as c:
        assert isinstance(c.sock, ssl.SSLSocket)
        assert c.sock.version() == "TLSv1.2"
        c.request("GET", "/api/users/1")
        assert c.read_response().status == 200


def test_plain_http_to_the_tls_listener_does_not_get_a_response(
    gateway: GatewayFactory, demo: UpstreamProcess, tls_files: Any
) -> None:
    gw = tls_gateway(gateway, demo, tls_files, "1.2")
    with RawConn(gw.port) as c:
        c.request("GET", "/api/users/1")
        assert c.closed_by_peer(5)
        assert not c.buf.startswith(b"HTTP/1.1 200")


# ----------------------------------------------------------------------------- https upstreams
@pytest.fixture
def tls_upstream(scripted: Callable[..., ScriptedUpstream], test_ca: Any) -> ScriptedUpstream:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(test_ca.cert), str(test_ca.key))
    up: ScriptedUpstream = scripted(echo_handler, ssl_context=ctx)
    return up


def test_https_upstream_verified_with_ca_path(
    gateway: GatewayFactory, tls_upstream: ScriptedUpstream, test_ca: Any
) -> None:
    gw = gateway({"secure": {"base_url": tls_upstream.url, "ca_path": str(test_ca.ca_cert)}})
    with RawConn(gw.port) as c:
        for _ in range(3):
            c.request("GET", "/over-tls?q=1")
            r = c.read_response()
            assert r.status == 200
            assert r.json()["target"] == "/over-tls?q=1"
    assert tls_upstream.connections == 1  # TLS connections are pooled too


def test_https_upstream_with_an_unknown_ca_is_502(
    gateway: GatewayFactory, tls_upstream: ScriptedUpstream
) -> None:
    gw = gateway({"secure": tls_upstream.url})  # system CAs only: the test CA is not among them
    with RawConn(gw.port) as c:
        c.request("GET", "/over-tls")
        r = c.read_response()
    assert r.status == 502
    assert r.json()["error"] == "upstream_unavailable"
    assert tls_upstream.requests == []  # nothing was sent over the unverified connection


def test_https_upstream_without_verification_when_disabled(
    gateway: GatewayFactory, tls_upstream: ScriptedUpstream
) -> None:
    gw = gateway({"secure": {"base_url": tls_upstream.url, "verify_tls": False}})
    with RawConn(gw.port) as c:
        c.request("GET", "/unverified")
        assert c.read_response().status == 200
