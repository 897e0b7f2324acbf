"""Deterministic cost per proxied request: the data plane driven through fake transports.

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.N .venv/bin/python bench/callgrind_driver.py N

Instructions per request = (total at N=3000 - total at N=1000) / 2000, which removes
start-up and import costs. No sockets and no kernel: the client connection and the
upstream connection are the gateway's own protocol objects fed with bytes, so the count
is the gateway's user-space work only (HttpServerProtocol, App.handle, the filters of
bench/apigate-bench.yaml, the proxy, the upstream parser), repeatable to the instruction
on a busy machine. Works on builds before and after the composition root moved App's
construction to apigate/server.py, so that a change can be measured against its parent.

`CALLGRIND_CONFIG` names another configuration (bench/traffic/*.yaml, with the same route)
and `CALLGRIND_HEADER` adds one request header (bench/traffic_ab.sh --callgrind).
For the full stack (bench/callgrind_full.sh): `CALLGRIND_START=1` starts the log pipeline and
the filters (a real Redis for the rate limiter; the loop runs between batches) and
`CALLGRIND_CONCURRENCY=K` sends K requests on K connections at a time, so that the rate
limiter batches K checks per Redis round trip as it does under load.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import uvloop

_EXTRA = os.environ.get("CALLGRIND_HEADER", "").encode("latin-1")
REQUEST = (
    b"GET /api/users HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
    + (_EXTRA + b"\r\n" if _EXTRA else b"")
    + b"\r\n"
)
BODY = b'{"id":4,"name":"bench-user","email":"u@example.org"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(BODY), BODY)
)


class Transport:
    """Enough of an asyncio transport for both protocols: writes are counted, not sent."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


CONCURRENCY = int(os.environ.get("CALLGRIND_CONCURRENCY", "1"))
START = os.environ.get("CALLGRIND_START") == "1"
_SERVER: list[Any] = [None]


def build(cfg: Any) -> tuple[Any, Any, Any]:
    """(handler, listener state, upstream pool) for either layout of the code."""
    try:
        from apigate.server import Server  # the composition root (issue 11)
    except ImportError:
        from apigate.gateway.app import App  # before it

        app = App(cfg)
        return app.handle, app.state, next(iter(app.pools.values()))
    server = Server(cfg)
    _SERVER[0] = server
    return server.app.handle, server.state, next(iter(server.pools.values()))


async def start(server: Any, cfg: Any) -> None:
    """What Server.start does besides listening: the log pipeline and the filters' own start
    (Redis connections, the rate limiter's batcher), so that a full-stack configuration runs."""
    from apigate.logs import events
    from apigate.logs.pipeline import Pipeline

    server.logs = Pipeline.from_config(cfg.logging, 0)
    await server.logs.start()
    events.attach(server.logs, take_early=True)
    for f in server.filters:
        await f.start()


async def run(n: int) -> None:
    import asyncio

    from apigate.config import load_config
    from apigate.http.client import ConnState, UpstreamConnection
    from apigate.http.server import HttpServerProtocol

    os.environ.setdefault("APIGATE_BENCH_PORT", "19301")
    os.environ.setdefault("APIGATE_BENCH_UPSTREAM", "http://127.0.0.1:19101")
    default = os.path.join(os.path.dirname(__file__), "apigate-bench.yaml")
    cfg = load_config(os.environ.get("CALLGRIND_CONFIG", default))
    handle, state, pool = build(cfg)
    if START:
        await start(_SERVER[0], cfg)
    upstreams = []
    for _ in range(CONCURRENCY):
        upstream = UpstreamConnection(pool)
        upstream.connection_made(Transport())
        upstream.state = ConnState.ACTIVE
        pool.active += 1
        pool.release(upstream, True)  # idle keep-alive connections, as after the first request
        upstreams.append(upstream)
    clients = []
    for _ in range(CONCURRENCY):
        client = HttpServerProtocol(handle, state)
        client.connection_made(Transport())
        clients.append(client)
    answered = {id(u): 0 for u in upstreams}
    for _ in range(n // CONCURRENCY):
        for client in clients:
            client.data_received(REQUEST)
        pending = CONCURRENCY
        while pending:
            for u in upstreams:
                written = u.transport.written  # type: ignore[attr-defined]
                if written > answered[id(u)]:
                    answered[id(u)] = written
                    u.data_received(RESPONSE)
                    pending -= 1
            if pending:
                await asyncio.sleep(0)  # a filter waits on a real socket (Redis)
        if START:
            await asyncio.sleep(0)  # the log pipeline's pump runs between batches
    for client in clients:
        assert client.transport.written > (n // CONCURRENCY) * len(BODY), "no responses"  # type: ignore[attr-defined]
    assert len(pool.idle) == CONCURRENCY, "the upstream connections were not reused"


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    uvloop.run(run(n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
