"""The proxy's stale-connection retry, driven through fake transports.

A pooled keep-alive connection can be closed by the upstream just as a request is sent
on it (its idle timeout, keepalive_requests). gateway/proxy.py retries such a request
once on a fresh connection when that cannot duplicate an effect: the method is
idempotent (RFC 9110 §9.2.2). The client connection, the stale pooled connection and
the fresh one are all the gateway's own protocol objects on fake transports
(tests/unit/transports.py), so the test decides exactly when the upstream "closes".
"""

from __future__ import annotations

from cycles import serve
from transports import FakeTransport, net_loop, parse_responses, run_in_loop, settle

from apigate.config.schema import Config
from apigate.http.client import ConnState, UpstreamConnection
from apigate.server import Server

OK_FRESH = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"


def gateway_with_stale_connection() -> tuple[Server, FakeTransport, FakeTransport]:
    """A gateway whose pool holds one idle connection; returns (server, client side,
    pooled upstream side)."""
    cfg = Config.model_validate(
        {
            "logging": {"level": "ERROR"},
            "observability": {"metrics_enabled": False},
            "upstreams": [{"id": "u", "base_url": "http://127.0.0.1:9"}],
            "routes": [{"id": "r", "path": "/api/*", "upstream_id": "u", "methods": ["GET", "POST"]}],
        }
    )
    server = Server(cfg)
    pool = server.pools["u"]
    stale = UpstreamConnection(pool)
    pooled = FakeTransport(("127.0.0.1", 9))
    pooled.attach(stale)
    stale.state = ConnState.ACTIVE
    pool.active += 1
    pool.release(stale, True)  # idle in the pool, as after an earlier request
    _, client = serve(server.app.handle, server.state)
    return server, client, pooled


@run_in_loop
async def test_idempotent_request_is_retried_once_on_a_fresh_connection() -> None:
    server, client, pooled = gateway_with_stale_connection()
    client.protocol.data_received(b"GET /api/users HTTP/1.1\r\nHost: gw\r\n\r\n")
    # The request went out on the pooled connection first...
    assert pooled.take().startswith(b"GET /api/users HTTP/1.1\r\n")
    # ...which the upstream had closed: no response, a reset.
    pooled.peer_closes(ConnectionResetError("reset by peer"))
    await settle()
    loop = net_loop()
    assert len(loop.transports) == 1, "one fresh connection for the retry"
    fresh = loop.transports[0]
    assert fresh.take().startswith(b"GET /api/users HTTP/1.1\r\n")
    fresh.protocol.data_received(OK_FRESH)
    await settle()
    [response] = parse_responses(client.take())
    assert (response.status, response.body) == (200, b"fresh")
    assert not client.closed  # keep-alive survives the retry
    assert server.pools["u"].idle == [fresh.protocol]  # and the fresh connection is pooled


@run_in_loop
async def test_a_second_reset_is_not_retried_again() -> None:
    _, client, pooled = gateway_with_stale_connection()
    client.protocol.data_received(b"GET /api/users HTTP/1.1\r\nHost: gw\r\n\r\n")
    pooled.peer_closes(ConnectionResetError("reset by peer"))
    await settle()
    fresh = net_loop().transports[0]
    fresh.peer_closes(ConnectionResetError("reset again"))
    await settle()
    [response] = parse_responses(client.take())
    assert response.status == 502 and response.json()["error"] == "upstream_unavailable"
    assert len(net_loop().transports) == 1  # once, never in a loop


@run_in_loop
async def test_non_idempotent_request_is_not_retried_and_gets_502() -> None:
    _, client, pooled = gateway_with_stale_connection()
    client.protocol.data_received(b"POST /api/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
    await settle()
    assert pooled.take().endswith(b"{}")
    pooled.peer_closes(ConnectionResetError("reset by peer"))
    await settle()
    [response] = parse_responses(client.take())
    assert response.status == 502 and response.json()["error"] == "upstream_unavailable"
    # A POST that may have reached the upstream is never sent twice.
    assert net_loop().transports == []


@run_in_loop
async def test_a_proxied_request_leaves_no_reference_cycle() -> None:
    """A finished request is freed by reference counting: an object cycle left behind
    (a callback bound to the exchange kept on the listener's cycle) makes the cyclic GC
    run every few hundred requests, ~10 % of the data plane's instructions."""
    import gc

    server, client, pooled = gateway_with_stale_connection()
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            client.protocol.data_received(b"GET /api/users HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert pooled.take().startswith(b"GET /api/users")
            pooled.protocol.data_received(OK_FRESH)
            await settle()
        answered = client.take()
        assert gc.collect() == 0, "per-request objects were only freed by the cyclic GC"
    finally:
        gc.enable()
    assert [r.status for r in parse_responses(answered)] == [200] * 50
    assert server.pools["u"].idle == [pooled.protocol]
