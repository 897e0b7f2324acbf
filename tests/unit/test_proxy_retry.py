"""The proxy's stale-connection retry, driven through fake transports.

A pooled keep-alive connection can be closed by the upstream just as a request is sent
on it (its idle timeout, keepalive_requests). gateway/proxy.py retries such a request
once on a fresh connection when that cannot duplicate an effect: the method is
idempotent (RFC 9110 §9.2.2). Here the client side and the stale pooled connection are
the gateway's own protocol objects on fake transports, so the test decides exactly when
the upstream "closes"; the fresh connection goes to a real loopback server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from apigate.config.schema import Config
from apigate.http.client import ConnState, UpstreamConnection
from apigate.http.server import HttpServerProtocol
from apigate.server import Server


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


class FreshUpstream:
    """A real upstream on loopback: answers every request with 200 'fresh'."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> FreshUpstream:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                self.received.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self, gateway: Server) -> None:
        for pool in gateway.pools.values():
            pool.close()
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await asyncio.sleep(0.05)


async def gateway_with_stale_connection(
    port: int,
) -> tuple[Server, FakeTransport, FakeTransport, UpstreamConnection]:
    cfg = Config.model_validate(
        {
            "logging": {"level": "ERROR"},
            "observability": {"metrics_enabled": False},
            "upstreams": [{"id": "u", "base_url": f"http://127.0.0.1:{port}"}],
            "routes": [{"id": "r", "path": "/api/*", "upstream_id": "u", "methods": ["GET", "POST"]}],
        }
    )
    server = Server(cfg)
    pool = server.pools["u"]
    stale = UpstreamConnection(pool)
    upstream_side = FakeTransport()
    stale.connection_made(upstream_side)
    stale.state = ConnState.ACTIVE
    pool.active += 1
    pool.release(stale, True)  # idle in the pool, as after an earlier request
    client = HttpServerProtocol(server.app.handle, server.state)
    client_side = FakeTransport()
    client.connection_made(client_side)
    return server, client_side, upstream_side, stale


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_idempotent_request_is_retried_once_on_a_fresh_connection() -> None:
    async def scenario() -> None:
        upstream = await FreshUpstream().start()
        received = upstream.received
        server, client_side, upstream_side, stale = await gateway_with_stale_connection(upstream.port)
        client = next(iter(server.state.connections))
        client.data_received(b"GET /api/users HTTP/1.1\r\nHost: gw\r\n\r\n")
        # The request went out on the pooled connection first...
        assert upstream_side.data.startswith(b"GET /api/users HTTP/1.1\r\n")
        # ...which the upstream had closed: no response, a reset.
        stale.connection_lost(ConnectionResetError("reset by peer"))
        await wait_for(lambda: b"fresh" in client_side.data)
        assert client_side.data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert len(received) == 1 and received[0].startswith(b"GET /api/users HTTP/1.1\r\n")
        assert not client_side.closed  # keep-alive survives the retry
        await upstream.stop(server)

    asyncio.run(scenario())


def test_non_idempotent_request_is_not_retried_and_gets_502() -> None:
    async def scenario() -> None:
        upstream = await FreshUpstream().start()
        received = upstream.received
        server, client_side, upstream_side, stale = await gateway_with_stale_connection(upstream.port)
        client = next(iter(server.state.connections))
        client.data_received(b"POST /api/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
        await wait_for(lambda: upstream_side.data.endswith(b"{}"))
        stale.connection_lost(ConnectionResetError("reset by peer"))
        await wait_for(lambda: b"\r\n\r\n" in client_side.data)
        assert client_side.data.startswith(b"HTTP/1.1 502 ")
        assert b'"error":"upstream_unavailable"' in client_side.data
        await asyncio.sleep(0.05)
        assert received == []  # a POST that may have reached the upstream is never sent twice
        await upstream.stop(server)

    asyncio.run(scenario())
