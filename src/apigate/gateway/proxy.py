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
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Final

from mypy_extensions import mypyc_attr

from apigate.gateway.filters import RequestContext, finish
from apigate.http import clock
from apigate.http.body import ClientDisconnected
from apigate.http.client import (
    ConnectionReset,
    ResponseSink,
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    _drop_named,
)
from apigate.http.headers import (
    CONTENT_LENGTH,
    EXPECT,
    GATEWAY_SET_REQUEST,
    HOP_BY_HOP,
    HOST,
    X_FORWARDED_FOR,
    X_USER_ID,
    Headers,
    chunk_size_line,
    content_length_line,
)

if TYPE_CHECKING:
    from apigate.gateway.filters import FilterChain
    from apigate.http.server import RequestCycle

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
REPLAY_MAX_BYTES: Final = 64 * 1024  # request bodies up to this size are kept for one retry
# The client's fields never forwarded as sent (header transforms add the ones a route
# sets or removes: RequestContext.skip_request_fields).
SKIP_REQUEST: Final = HOP_BY_HOP | GATEWAY_SET_REQUEST | {CONTENT_LENGTH, EXPECT, X_FORWARDED_FOR, X_USER_ID}
_PROTO_HTTP: Final = b"\r\nx-forwarded-proto: http\r\n"
_PROTO_HTTPS: Final = b"\r\nx-forwarded-proto: https\r\n"
_now: Final = clock.now  # a C static: the module attribute would be looked up per call


def build_request_head(ctx: RequestContext, pool: UpstreamPool, upstream_path: bytes) -> bytes:
    cycle = ctx.cycle
    headers = cycle.headers
    # Few pieces, appended one by one: compiled, b"".join costs ~100 instructions a piece,
    # and `out += (...)` builds a tuple first.
    out: list[bytes] = [
        cycle.method.encode("ascii"),
        b" ",
        pool.base_path,
        upstream_path,
        ctx.query,
        pool.host_line,
    ]
    xff: bytes | None = None
    host = b""
    skip = SKIP_REQUEST if ctx.skip_request_fields is None else ctx.skip_request_fields
    for name, value in headers:
        if name in skip:
            if name == X_FORWARDED_FOR:
                xff = value if xff is None else xff + b", " + value
            elif name == HOST:
                host = value
            elif name == X_USER_ID:
                # Only the identity a filter established goes upstream (auth sets both);
                # a client's own X-User-ID never does, with or without auth configured.
                user = ctx.user
                if user is not None and value == user.encode():
                    out.append(b"x-user-id: ")
                    out.append(value)
                    out.append(b"\r\n")
            # The fields a Connection header names were already dropped by the listener,
            # before any filter added its own (http/server.py, on_headers_complete).
            continue
        out.append(name)
        out.append(b": ")
        out.append(value)
        out.append(b"\r\n")
    if ctx.request_fields is not None:
        out.append(ctx.request_fields)  # a filter's fields, serialized (header transforms)
    proto = cycle.proto
    client = proto.client_ip_b
    out.append(b"x-request-id: ")
    out.append(ctx.request_id_b)
    out.append(b"\r\nx-forwarded-for: ")
    out.append(client if xff is None else xff + b", " + client)
    out.append(_PROTO_HTTPS if proto.scheme_b == b"https" else _PROTO_HTTP)
    if host:
        out.append(b"x-forwarded-host: ")
        out.append(host)
        out.append(b"\r\n")
    if cycle.body is not None:
        if cycle.content_length is not None:
            out.append(content_length_line(cycle.content_length))
        else:
            out.append(b"transfer-encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def _drop_fields(lines: list[bytes], names: set[bytes], mask: int) -> list[bytes]:
    """The upstream's serialized fields without those a filter named (lowercase names);
    the list itself when none is there. A field whose name length no name has is passed
    over without lowering it (`length_mask`), which is nearly every field."""
    for i in range(0, len(lines), 4):
        name = lines[i]
        if mask >> len(name) & 1 and name.lower() in names:
            return _drop_named(lines, names)
    return lines


# One freed instance is kept for the next request (compiled): per-request objects are
# made and freed in turn, so most requests skip the allocator.
@mypyc_attr(free_list_len=1)
class Exchange(ResponseSink):
    """The proxy's side of one upstream request: receives the parsed response."""

    __slots__ = (
        "chain",
        "conn",
        "ctx",
        "cycle",
        "error",
        "got_head",
        "head",
        "loop",
        "on_done",
        "progress_seen",
        "proxy",
        "timeout",
    )

    def __init__(
        self,
        ctx: RequestContext,
        conn: UpstreamConnection,
        head: bytes,
        on_done: Callable[[Exchange], None] | None,
        proxy: Proxy | None = None,
    ) -> None:
        """Ends through `proxy.fast_done(self)` when `proxy` is given (a direct call,
        compiled), else through `on_done(self)`."""
        self.ctx = ctx
        self.cycle: RequestCycle = ctx.cycle
        self.chain: FilterChain = ctx.chain
        self.conn = conn
        self.head = head
        self.loop = conn.loop
        self.timeout = ctx.pool.timeout
        self.on_done = on_done
        self.proxy = proxy
        self.error: UpstreamError | None = None
        self.got_head = False
        self.progress_seen = 0  # conn.progress when the deadline last passed mid-body

    def cork(self) -> bool:
        return self.cycle.proto.cork()

    def uncork(self) -> None:
        self.cycle.proto.uncork()

    def send_head(self) -> None:
        cycle = self.cycle
        cycle.set_deadline(self.loop.time() + self.timeout, self.on_deadline)
        self.conn.send(self, self.head, cycle.method == "HEAD")

    def on_deadline(self, now: float) -> None:
        """The upstream's timeout_secs passed (the listener's watchdog calls this)."""
        cycle = self.cycle
        if not cycle.response_started:
            cycle.time_out()  # 504; cancelling ends this exchange through `cancel`
            return
        conn = self.conn
        if conn.progress == self.progress_seen:
            # The upstream stalled mid-body: nothing to answer with, cut both sides.
            cycle.proto.abort_response()
            return
        # Still sending: timeout_secs bounds a silence, not the whole body (a long
        # download at a steady pace was cut at timeout_secs).
        self.progress_seen = conn.progress
        cycle.handler_deadline = now + self.timeout

    # ------------------------------------------------------------------ ResponseSink
    def on_upstream_head(self, status: int, lines: list[bytes], length: int | None) -> None:
        # `lines`: the upstream's end-to-end fields, already serialized by the upstream
        # connection (hop-by-hop ones dropped). The filters add theirs after them.
        ctx = self.ctx
        if status == 502 or status == 503:
            retry = self.conn.pool.retry_status
            if retry is not None and retry(ctx, status):
                # Sent again to another target: this answer never reaches the client.
                self.conn.sink = _Discard(self, status)
                return
        self.got_head = True
        now = _now()
        ctx.upstream_duration = now - ctx.start
        drop = ctx.drop_response_fields
        if drop is not None:
            lines = _drop_fields(lines, drop, ctx.drop_response_mask)
        added: Headers = list(ctx.response_headers) if ctx.response_headers else []
        self.chain.run_response(ctx, status, added)
        for name, value in added:
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
        if ctx.response_fields is not None:
            lines.append(ctx.response_fields)  # CORS, header transforms: serialized already
        cycle = self.cycle
        ctx.status = status
        cycle.start_response_lines(status, lines, length)
        # While the body streams, the upstream must keep sending within its timeout.
        cycle.handler_deadline = now + self.timeout
        conn = self.conn
        cycle.flow = conn
        self.progress_seen = conn.progress
        if cycle.proto.write_paused:
            conn.pause_reading()

    def on_upstream_body(self, chunk: bytes) -> None:
        self.cycle.write(chunk)

    def on_upstream_complete(self) -> None:
        cycle = self.cycle
        cycle.handler_deadline = 0.0
        cycle.flow = None
        if cycle.chunked_response:
            cycle.end()
        else:
            cycle.response_complete = True
        self._done()

    def on_upstream_failed(self, error: UpstreamError) -> None:
        self.error = error
        self.cycle.flow = None
        self._done()

    def cancel(self) -> None:
        """The listener gave up (deadline passed, client gone): drop the upstream connection
        and end the request through `on_done` all the same, so that on_complete still runs."""
        self.conn.abort()  # no more callbacks from it
        self.cycle.flow = None
        self.error = _CANCELLED
        self._done()

    def _done(self) -> None:
        proxy = self.proxy
        if proxy is not None:
            proxy.fast_done(self)
        elif self.on_done is not None:
            self.on_done(self)


class RetryableStatus(UpstreamError):
    """The upstream answered 502 or 503 and the request goes to another target
    (`retries.on`); counted like any 5xx answer."""

    reason = "5xx"
    code = "bad_gateway"

    def __init__(self, status: int) -> None:
        super().__init__(f"the upstream answered {status}")
        self.status = status


class _Discard(ResponseSink):
    """Reads a response that will be retried elsewhere to its end, then ends the exchange."""

    __slots__ = ("exchange", "status")

    def __init__(self, exchange: Exchange, status: int) -> None:
        self.exchange = exchange
        self.status = status

    def cork(self) -> bool:
        return False

    def uncork(self) -> None:
        pass

    def on_upstream_head(self, status: int, lines: list[bytes], length: int | None) -> None:
        pass

    def on_upstream_body(self, chunk: bytes) -> None:
        pass

    def on_upstream_complete(self) -> None:
        self.exchange.on_upstream_failed(RetryableStatus(self.status))

    def on_upstream_failed(self, error: UpstreamError) -> None:
        self.exchange.on_upstream_failed(RetryableStatus(self.status))


class Cancelled(UpstreamError):
    """The listener ended the request itself (it answered 408/504, or the client left)."""


class UpstreamTimeout(UpstreamError):
    """The listener's deadline passed while the upstream had not answered (it sent 504)."""

    reason = "timeout"
    code = "upstream_timeout"


_CANCELLED: Final = Cancelled("cancelled by the listener")


Finished = Callable[["RequestContext", "UpstreamError | None"], None]


def _retryable(exchange: Exchange, reused: bool) -> bool:
    """A reused connection died before any response: safe to send the request again."""
    return reused and isinstance(exchange.error, ConnectionReset) and not exchange.got_head


class Proxy:
    """Forwards requests to their route's upstream pool (`ctx.pool`). A request that
    succeeds ends in `finish(ctx)`; any other ending goes to `finished(ctx, error)`, which
    answers the error (or cuts a response already started) and then finishes.

    Fast path (no request body, an idle pooled connection): no task and no future; the
    response is written from the upstream's parser callbacks and the request finishes in
    `on_upstream_complete`. Connecting, streaming a body and retrying run in a task.
    """

    def __init__(self, finished: Finished) -> None:
        self.finished = finished  # (ctx, error): the request ended, maybe with an upstream error
        self.loop = asyncio.get_running_loop()

    def start(self, ctx: RequestContext, upstream_path: bytes) -> None:
        """Forward to the route's upstream (`ctx.pool`), at `upstream_path`."""
        cycle = ctx.cycle
        pool = ctx.pool
        head = build_request_head(ctx, pool, upstream_path)
        if cycle.body is None:
            conn = pool.acquire_idle()
            if conn is not None:
                exchange = Exchange(ctx, conn, head, None, self)
                cycle.on_cancel = exchange.cancel
                # send_head(), with the request's start as the clock (no clock read).
                cycle.set_deadline(ctx.start + exchange.timeout, exchange.on_deadline)
                conn.send(exchange, head, cycle.method == "HEAD")
                return
        self._spawn(ctx, head, retried=False)

    def _spawn(self, ctx: RequestContext, head: bytes, retried: bool) -> None:
        task = self.loop.create_task(self._forward(ctx, head, retried))
        ctx.cycle.on_cancel = partial(self._cancel_task, ctx, task)

    def fast_done(self, exchange: Exchange) -> None:
        """The end of a fast-path exchange (see the class)."""
        ctx = exchange.ctx
        conn = exchange.conn
        ctx.cycle.on_cancel = None
        error = exchange.error
        up = ctx.upstream_duration  # when the response head came: a moment ago
        pool = conn.pool
        pool.release(conn, error is None, ctx.start + up if up is not None else 0.0)
        if error is None:
            if pool.watched:
                self.finished(ctx, None)  # a balanced target: its success is reported
            else:
                finish(ctx)
        elif error is _CANCELLED:
            self._cancelled(ctx)
        elif ctx.method in IDEMPOTENT and _retryable(exchange, True):
            self._spawn(ctx, exchange.head, retried=True)
        else:
            self.finished(ctx, error)

    def _cancel_task(self, ctx: RequestContext, task: asyncio.Task[None]) -> None:
        task.cancel()  # its `finally` releases the upstream connection
        self._cancelled(ctx)

    def _cancelled(self, ctx: RequestContext) -> None:
        """End a request the listener gave up on. Without this, requests it answered 408 or
        504 itself, and those whose client left, never reached on_complete: no access
        event, no metrics."""
        cycle = ctx.cycle
        error: UpstreamError | None = None
        if cycle.timed_out:
            ctx.error = code = cycle.timeout_code()
            if code == "upstream_timeout":
                error = UpstreamTimeout("the upstream did not answer in time")
        self.finished(ctx, error)

    async def _forward(self, ctx: RequestContext, head: bytes, retried: bool) -> None:
        try:
            await self._exchange_with_retry(ctx, head, retried)
        except UpstreamError as e:
            ctx.cycle.on_cancel = None
            self.finished(ctx, e)
        except ClientDisconnected:
            ctx.cycle.on_cancel = None
            ctx.cycle.keep_alive = False
            self.finished(ctx, None)
        else:
            ctx.cycle.on_cancel = None
            self.finished(ctx, None)

    async def _exchange_with_retry(self, ctx: RequestContext, head: bytes, retried: bool) -> None:
        cycle = ctx.cycle
        pool = ctx.pool
        timeout = pool.timeout
        body = cycle.body
        chunked = cycle.content_length is None
        replayable = cycle.method in IDEMPOTENT
        sent: list[bytes] = []  # body bytes already sent, kept for a replay while small
        sent_size = 0
        loop = self.loop
        while True:
            conn = None if retried else pool.acquire_idle()
            reused = conn is not None
            if conn is None:
                conn = await pool.connect()
            waiter: asyncio.Future[None] = loop.create_future()

            def done(_: Exchange, waiter: asyncio.Future[None] = waiter) -> None:
                if not waiter.done():
                    waiter.set_result(None)

            exchange = Exchange(ctx, conn, head, done)
            ok = False
            try:
                exchange.send_head()
                if body is not None:
                    # The upstream's timeout_secs is its time to answer: while the client is
                    # still uploading, only request_timeout_secs bounds the request (else an
                    # upload longer than timeout_secs got a 408 however long the request
                    # deadline). The upstream's clock starts once the body is all sent.
                    cycle.handler_deadline = 0.0
                    for chunk in sent:
                        conn.write_body(_frame(chunk, chunked))
                    while not waiter.done():
                        if sent_size == 0:
                            cycle.send_continue()
                        chunk = await body.read()
                        if not chunk:
                            if chunked:
                                conn.write_body(b"0\r\n\r\n")
                            break
                        conn.write_body(_frame(chunk, chunked))
                        if sent_size <= REPLAY_MAX_BYTES:
                            sent_size += len(chunk)
                            if sent_size <= REPLAY_MAX_BYTES:
                                sent.append(chunk)
                            else:
                                sent.clear()
                        else:
                            sent_size += len(chunk)
                        if conn.write_paused:
                            # The upstream is not taking the body: from here it has
                            # timeout_secs to take more, and a timeout is its fault (504).
                            cycle.upstream_blocked = True
                            cycle.set_deadline(loop.time() + timeout, exchange.on_deadline)
                            await conn.drain()
                            cycle.upstream_blocked = False
                            cycle.handler_deadline = 0.0
                    if not waiter.done() and not exchange.got_head:
                        cycle.set_deadline(loop.time() + timeout, exchange.on_deadline)
                await waiter
                error = exchange.error
                if error is None:
                    # An upstream that answered before reading the whole body left the
                    # connection mid-request: it cannot carry another one.
                    ok = body is None or body.exhausted
                    return
                if (
                    not retried
                    and replayable
                    and sent_size <= REPLAY_MAX_BYTES
                    and _retryable(exchange, reused)
                ):
                    retried = True  # and round the loop again, on a fresh connection
                else:
                    raise error
            finally:
                pool.release(conn, ok)


def _frame(chunk: bytes, chunked: bool) -> bytes:
    if chunked:
        return chunk_size_line(len(chunk)) + chunk + b"\r\n"
    return chunk


__all__ = ["IDEMPOTENT", "Exchange", "Proxy", "RetryableStatus", "build_request_head"]
