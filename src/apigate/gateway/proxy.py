"""The terminal step: forward the request to its upstream and stream the response back.

Request headers are rewritten once into the upstream request head (hop-by-hop fields
dropped per RFC 9110 §7.6.1, X-Forwarded-* and X-Request-ID set, framing re-derived);
the body streams with backpressure both ways. The response is written to the client from
the upstream connection's parser callbacks (`Exchange`), with no task switch per chunk.

A pooled keep-alive connection can be closed by the upstream just as a request is sent
on it (idle timeout, `keepalive_requests` reached). Such a request is retried once on a
fresh connection when that cannot duplicate an effect: the method is idempotent (RFC
9110 §9.2.2) and its body, if any, was small enough to keep for replay, or nothing of it
reached the upstream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from apigate.http.client import (
    ConnectionReset,
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
)
from apigate.http.headers import (
    CONNECTION,
    CONTENT_LENGTH,
    EXPECT,
    GATEWAY_SET_REQUEST,
    HOP_BY_HOP,
    HOST,
    X_FORWARDED_FOR,
    Headers,
    connection_tokens,
)

if TYPE_CHECKING:
    from apigate.gateway.context import RequestContext
    from apigate.gateway.filters import FilterChain
    from apigate.http.server import RequestCycle

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
REPLAY_MAX_BYTES = 64 * 1024  # request bodies up to this size are kept for one retry
_SKIP_REQUEST = HOP_BY_HOP | GATEWAY_SET_REQUEST | {CONTENT_LENGTH, EXPECT, X_FORWARDED_FOR}
_SKIP_RESPONSE = HOP_BY_HOP | {CONTENT_LENGTH}
_TRIVIAL_CONNECTION_TOKENS = {b"keep-alive", b"close"}


def build_request_head(ctx: RequestContext, pool: UpstreamPool, upstream_path: bytes) -> bytes:
    cycle = ctx.cycle
    out: list[bytes] = [
        cycle.method.encode("ascii"),
        b" ",
        pool.base_path,
        upstream_path,
        ctx.query,
        b" HTTP/1.1\r\nhost: ",
        pool.host_header,
        b"\r\n",
    ]
    xff: bytes | None = None
    host = b""
    named = _connection_named(cycle.headers)
    for name, value in cycle.headers:
        if name in _SKIP_REQUEST:
            if name == X_FORWARDED_FOR:
                xff = value if xff is None else xff + b", " + value
            elif name == HOST:
                host = value
            continue
        if named and name in named:
            continue
        out += (name, b": ", value, b"\r\n")
    client = ctx.client_ip.encode("ascii")
    out += (
        b"x-request-id: ",
        ctx.request_id.encode("ascii"),
        b"\r\nx-forwarded-for: ",
        client if xff is None else xff + b", " + client,
        b"\r\nx-forwarded-proto: ",
        cycle.scheme.encode("ascii"),
        b"\r\n",
    )
    if host:
        out += (b"x-forwarded-host: ", host, b"\r\n")
    if cycle.body is not None:
        if cycle.content_length is not None:
            out.append(b"content-length: %d\r\n" % cycle.content_length)
        else:
            out.append(b"transfer-encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _connection_named(headers: Headers) -> set[bytes] | None:
    """Fields a Connection header names as hop-by-hop (beyond keep-alive/close)."""
    named: set[bytes] | None = None
    for name, value in headers:
        if name == CONNECTION:
            tokens = connection_tokens(value) - _TRIVIAL_CONNECTION_TOKENS
            if tokens:
                named = tokens if named is None else named | tokens
    return named


class Exchange:
    """The proxy's side of one upstream request: receives the parsed response."""

    __slots__ = ("chain", "conn", "ctx", "cycle", "done", "error", "got_head", "loop", "timeout")

    def __init__(
        self, ctx: RequestContext, chain: FilterChain, conn: UpstreamConnection, timeout: float
    ) -> None:
        self.ctx = ctx
        self.cycle: RequestCycle = ctx.cycle
        self.chain = chain
        self.conn = conn
        self.loop = conn.loop
        self.timeout = timeout
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.error: UpstreamError | None = None
        self.got_head = False

    def on_upstream_head(self, status: int, headers: Headers, length: int | None) -> None:
        self.got_head = True
        ctx = self.ctx
        ctx.upstream_duration = self.loop.time() - ctx.start
        named = _connection_named(headers)
        out: Headers = [
            (n, v) for n, v in headers if n not in _SKIP_RESPONSE and not (named and n in named)
        ]
        if ctx.response_headers:
            out.extend(ctx.response_headers)
        self.chain.run_response(ctx, status, out)
        cycle = self.cycle
        ctx.status = status
        cycle.start_response(status, out, length)
        # While the body streams, the upstream must keep sending within its timeout.
        cycle.upstream_deadline = self.loop.time() + self.timeout
        cycle.flow = self.conn
        if cycle.proto.write_paused:
            self.conn.pause_reading()

    def on_upstream_body(self, chunk: bytes) -> None:
        self.cycle.write(chunk)

    def on_upstream_complete(self) -> None:
        cycle = self.cycle
        cycle.upstream_deadline = 0.0
        cycle.end()
        if not self.done.done():
            self.done.set_result(None)

    def on_upstream_failed(self, error: UpstreamError) -> None:
        self.error = error
        if not self.done.done():
            self.done.set_result(None)


async def forward(
    ctx: RequestContext, chain: FilterChain, pool: UpstreamPool, upstream_path: bytes, timeout: float
) -> None:
    """Send the request upstream and stream the response to the client.

    Raises UpstreamError when nothing was sent to the client yet (the caller answers
    502/504); after the response started, a failure can only cut the connection.
    """
    cycle = ctx.cycle
    head = build_request_head(ctx, pool, upstream_path)
    body = cycle.body
    replayable = cycle.method in IDEMPOTENT
    sent: list[bytes] = []  # body bytes already sent, kept for a replay while small
    sent_size = 0
    retried = False
    loop = pool.loop
    while True:
        conn = pool.acquire_idle()
        reused = conn is not None
        if conn is None:
            conn = await pool.connect()
        exchange = Exchange(ctx, chain, conn, timeout)
        cycle.upstream_deadline = loop.time() + timeout
        cycle.proto.watch(cycle.upstream_deadline)
        reusable = False
        try:
            conn.send(exchange, head, cycle.method == "HEAD")
            if body is not None:
                chunked = cycle.content_length is None
                for chunk in sent:
                    conn.write_body(_frame(chunk, chunked))
                while exchange.error is None and not exchange.done.done():
                    if sent_size == 0 and not sent:
                        cycle.send_continue()
                    chunk = await body.read()
                    if not chunk:
                        if chunked:
                            conn.write_body(b"0\r\n\r\n")
                        break
                    conn.write_body(_frame(chunk, chunked))
                    if sent_size <= REPLAY_MAX_BYTES:
                        sent.append(chunk)
                        sent_size += len(chunk)
                        if sent_size > REPLAY_MAX_BYTES:
                            sent.clear()
                    if conn.write_paused:
                        await conn.drain()
            await exchange.done
            error = exchange.error
            if error is None:
                reusable = body is None or body.exhausted
                return
            if (
                isinstance(error, ConnectionReset)
                and reused
                and not retried
                and not exchange.got_head
                and replayable
                and sent_size <= REPLAY_MAX_BYTES
            ):
                retried = True
                continue
            raise error
        finally:
            if reusable:
                pool.release(conn, True)
            else:
                conn.close()
                pool.release(conn, False)
            cycle.flow = None


def _frame(chunk: bytes, chunked: bool) -> bytes:
    if chunked:
        return b"%x\r\n%s\r\n" % (len(chunk), chunk)
    return chunk


__all__ = ["IDEMPOTENT", "Exchange", "build_request_head", "forward"]
