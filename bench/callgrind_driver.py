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

`CALLGRIND_FULL=K` drives the full stack instead (docs/PERFORMANCE.md): the log pipeline and
the filters are started (a real Redis for the rate limiter) and K requests go at a time on K
connections, so that rate-limit checks batch as they do under load. The loop waits for
Redis in epoll, never spinning, so the count stays the gateway's own work (Redis is another
process); the batching depends on timing, so repeated runs differ by about 1 %.
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

    def __init__(self, on_write: Any = None) -> None:
        self.written = 0
        self.closing = False
        self.on_write = on_write  # CALLGRIND_FULL: what the driver does when the gateway writes

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.on_write is not None:
            self.on_write(data)

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


_SERVER: list[Any] = [None]  # the Server build() made (run_full starts its parts)


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


async def run(n: int) -> None:
    from apigate.config import load_config
    from apigate.http.client import ConnState, UpstreamConnection
    from apigate.http.server import HttpServerProtocol

    os.environ.setdefault("APIGATE_BENCH_PORT", "19301")
    os.environ.setdefault("APIGATE_BENCH_UPSTREAM", "http://127.0.0.1:19101")
    default = os.path.join(os.path.dirname(__file__), "apigate-bench.yaml")
    cfg = load_config(os.environ.get("CALLGRIND_CONFIG", default))
    handle, state, pool = build(cfg)
    upstream = UpstreamConnection(pool)
    upstream.connection_made(Transport())
    upstream.state = ConnState.ACTIVE
    pool.active += 1
    pool.release(upstream, True)  # an idle keep-alive connection, as after the first request
    client = HttpServerProtocol(handle, state)
    client_transport = Transport()
    client.connection_made(client_transport)
    for _ in range(n):
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)
    assert client_transport.written > n * len(BODY), "the responses did not reach the client"
    assert len(pool.idle) == 1, "the upstream connection was not reused"


async def run_full(n: int, k: int) -> None:
    """n requests, k at a time, through a started gateway (see the module's docstring)."""
    import asyncio

    from apigate.config import load_config
    from apigate.http.client import ConnState, UpstreamConnection
    from apigate.http.server import HttpServerProtocol
    from apigate.logs import events
    from apigate.logs.pipeline import Pipeline

    loop = asyncio.get_running_loop()
    cfg = load_config(os.environ["CALLGRIND_CONFIG"])
    handle, state, pool = build(cfg)
    server = _SERVER[0]
    server.logs = Pipeline.from_config(cfg.logging, 0)  # what Server.start does, without listening
    await server.logs.start()
    events.attach(server.logs, take_early=True)
    for f in server.filters:
        await f.start()

    def upstream_connection() -> UpstreamConnection:
        conn = UpstreamConnection(pool)
        due = [False]  # a response is scheduled (a request may come in more than one write)

        def answer() -> None:
            due[0] = False
            conn.data_received(RESPONSE)

        def on_request(data: bytes) -> None:
            if not due[0]:
                due[0] = True
                loop.call_soon(answer)

        conn.connection_made(Transport(on_request))
        conn.state = ConnState.ACTIVE
        pool.active += 1
        pool.release(conn, True)  # idle keep-alive connections, as after the first request
        return conn

    for _ in range(k):
        upstream_connection()
    batch: list[Any] = [None, 0, 0]  # the batch's future, responses due, 200s seen

    def on_response(data: bytes) -> None:
        if data.startswith(b"HTTP/1.1 "):
            batch[2] += data.startswith(b"HTTP/1.1 200 ")
            batch[1] -= 1
            if batch[1] == 0:
                batch[0].set_result(None)

    clients = []
    for _ in range(k):
        client = HttpServerProtocol(handle, state)
        client.connection_made(Transport(on_response))
        clients.append(client)
    for _ in range(n // k):
        batch[0], batch[1] = loop.create_future(), k
        for client in clients:
            client.data_received(REQUEST)
        await batch[0]
        await asyncio.sleep(0)  # the log pipeline's pump, between batches
    print(f"{batch[2]} of {n // k * k} responses were 200", file=sys.stderr)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    full = int(os.environ.get("CALLGRIND_FULL", "0"))
    uvloop.run(run_full(n, full) if full else run(n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
