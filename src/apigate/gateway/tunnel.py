"""WebSocket tunnels (RFC 6455): the listener's upgrade mode and the proxy's splice.

A request with `Connection: Upgrade` and `Upgrade: websocket` runs the route's filters
like any other (auth, rate limits, CORS...), then comes here instead of the proxy:

1. the handshake goes to the upstream on a fresh connection (never a pooled one: the
   connection becomes the tunnel and is never returned), with the request's end-to-end
   headers plus `Connection: Upgrade` and `Upgrade: websocket`, within the upstream's
   `connect_timeout_secs` and `timeout_secs`;
2. an answer other than `101 Switching Protocols` is relayed as a normal response, after
   which the client connection closes (nothing else may follow an upgrade request);
3. on 101 the answer is relayed (with the filters' response headers), the listener hands
   the client connection over (`HttpServerProtocol.detach`), and the two sockets are
   spliced: bytes flow unchanged both ways, and when one side's write buffer is full the
   other side's reading pauses (transport flow control, as uvicorn does it), so a fast
   sender never fills the gateway's memory;
4. the tunnel ends when either side closes, when it has been silent both ways for
   `server.websocket_idle_timeout_secs`, or at shutdown after the drain timeout; the last
   two send both sides a close frame with 1001 (going away) when no frame is half-sent.

The request ends (`finish`: metrics count it once, the access event is written) when the
tunnel closes: status 101, the duration of the whole tunnel, `request_size` and
`response_size` the bytes each way. `Tunnels` is a filter only for its lifecycle and
`samples()` (websocket_connections_active, websocket_connections_total{route}); it joins
no chain, so requests pay nothing for it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import httptools

from apigate.gateway.filters import Filter, RequestContext, Response, Sample, finish
from apigate.gateway.proxy import build_request_head
from apigate.gateway.router import Route
from apigate.http import clock
from apigate.http.client import UpstreamPool
from apigate.http.errors import error_body, error_headers
from apigate.http.headers import CONTENT_LENGTH, HOP_BY_HOP, Headers, decode_fields
from apigate.telemetry.names import WEBSOCKET_CONNECTIONS_ACTIVE, WEBSOCKET_CONNECTIONS_TOTAL

if TYPE_CHECKING:
    from apigate.http.server import HttpServerProtocol

GOING_AWAY: Final = 1001  # RFC 6455 §7.4.1
UPGRADE_LINES: Final = b"connection: Upgrade\r\nupgrade: websocket\r\n\r\n"
_SKIP_RESPONSE: Final = HOP_BY_HOP | {CONTENT_LENGTH}


def wants_websocket(headers: Headers) -> bool:
    """`Upgrade: websocket` among the request's headers (tokens are case-insensitive)."""
    return any(name == b"upgrade" and b"websocket" in value.lower() for name, value in headers)


def close_frame(code: int, masked: bool) -> bytes:
    """A Close frame with a status code (RFC 6455 §5.5.1); client frames are masked (§5.3)."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes((0x88, 2)) + payload
    key = os.urandom(4)
    return bytes((0x88, 0x82)) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class FrameTracker:
    """Where the frame boundaries are in one direction's byte stream (RFC 6455 §5.2), so
    that a close frame is only ever inserted between frames, never inside one."""

    __slots__ = ("head", "remaining")

    def __init__(self) -> None:
        self.head = b""  # an incomplete frame header
        self.remaining = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        return not self.head and not self.remaining

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.remaining:
                step = min(self.remaining, n - i)
                self.remaining -= step
                i += step
                continue
            held = len(self.head)
            head = self.head + data[i : i + 14]  # a header is at most 14 bytes
            parsed = _header(head)
            if parsed is None:
                self.head = head
                return
            size, payload = parsed
            self.head = b""
            i += size - held
            self.remaining = payload


def _header(head: bytes) -> tuple[int, int] | None:
    """(header size, payload length) of the frame header at the start of `head`, or None."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    ext = 2 if length == 126 else 8 if length == 127 else 0
    size = 2 + ext + (4 if head[1] & 0x80 else 0)
    if len(head) < size:
        return None
    if ext:
        length = int.from_bytes(head[2 : 2 + ext], "big")
    return size, length


class _ClientSide:
    """The client connection's protocol once the tunnel is open."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # pragma: no cover
        return None  # the transport exists already: set_protocol, not a new connection

    def data_received(self, data: bytes) -> None:
        self.tunnel.from_client(data)

    def eof_received(self) -> bool:
        return False  # a half-close ends the tunnel

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()

    def pause_writing(self) -> None:
        self.tunnel.pause(upstream=True)

    def resume_writing(self) -> None:
        self.tunnel.resume(upstream=True)


class _UpstreamSide:
    """The upstream connection: parses the handshake answer, then carries the tunnel."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.parser: Any = httptools.HttpResponseParser(self)
        self.headers: Headers = []
        self.status = 0
        self.length: int | None = None
        self.transport: asyncio.Transport | None = None

    # ------------------------------------------------------------------ protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel.open:
            tunnel.from_upstream(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self.status == 101:
                tunnel.switch(self.headers, data[e.args[0] :])
            else:
                tunnel.upstream_failed()
        except httptools.HttpParserError:
            tunnel.upstream_failed()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.upstream_lost()

    def pause_writing(self) -> None:
        self.tunnel.pause(upstream=False)

    def resume_writing(self) -> None:
        self.tunnel.resume(upstream=False)

    # ------------------------------------------------------------------ parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status != 101:
            for name, value in self.headers:
                if name.lower() == CONTENT_LENGTH:
                    self.length = int(value)
            self.tunnel.relay_head(self.status, self.headers, self.length)

    def on_body(self, body: bytes) -> None:
        self.tunnel.relay_body(body)

    def on_message_complete(self) -> None:
        if self.status != 101:
            self.tunnel.relay_done()


class Tunnel:
    """One WebSocket request: the handshake, then the splice of its two connections."""

    def __init__(self, owner: Tunnels, ctx: RequestContext, pool: UpstreamPool) -> None:
        self.owner = owner
        self.ctx = ctx
        self.pool = pool
        self.cycle = ctx.cycle
        self.loop = asyncio.get_running_loop()
        self.open = False  # spliced
        self.closed = False
        self.relaying = False  # a non-101 answer is being relayed
        self.client: asyncio.Transport | None = None
        self.upstream: _UpstreamSide | None = None
        self.bytes_up = 0  # client -> upstream
        self.bytes_down = 0  # upstream -> client
        self.up_frames = FrameTracker()
        self.down_frames = FrameTracker()
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ handshake
    def start(self, upstream_path: bytes) -> None:
        head = build_request_head(self.ctx, self.pool, upstream_path)[:-2] + UPGRADE_LINES
        self.cycle.on_cancel = self.cancel
        self.task = self.loop.create_task(self._connect(head))

    async def _connect(self, head: bytes) -> None:
        pool = self.pool
        try:
            async with asyncio.timeout(pool.connect_timeout):
                # A protocol by duck typing, which typeshed's bound rejects (as in the pool).
                transport, side = await self.loop.create_connection(  # type: ignore[type-var]
                    lambda: _UpstreamSide(self),
                    pool.host,
                    pool.port,
                    ssl=pool.ssl,
                    server_hostname=pool.host if pool.ssl else None,
                )
        except TimeoutError:
            self._fail("upstream_timeout", "timeout")
            return
        except OSError:
            self._fail("upstream_unavailable", "connect")
            return
        if self.closed:
            transport.close()
            return
        self.upstream = side
        cycle = self.cycle
        cycle.set_deadline(self.loop.time() + pool.timeout, self._on_deadline)
        transport.write(head)

    def _on_deadline(self, now: float) -> None:
        if not self.cycle.response_started:
            self.cycle.time_out()  # 504, and `cancel` through on_cancel

    def _fail(self, code: str, reason: str) -> None:
        """The handshake could not reach the upstream: answer through the gateway."""
        ctx = self.ctx
        if self.closed:
            return
        self.closed = True
        self.cycle.on_cancel = None
        ctx.upstream_failure = reason
        self._close_upstream()
        self.owner.reply(ctx, Response.error_reply(code, ctx))

    def upstream_failed(self) -> None:
        if self.relaying:
            self.cycle.proto.abort_response()
            self._end()
        else:
            self._fail("bad_gateway", "bad_response")

    def upstream_lost(self) -> None:
        if self.open:
            self.close()
        elif self.relaying:
            self.relay_done()
        elif not self.closed:
            self._fail("bad_gateway", "reset")

    def cancel(self) -> None:
        """The listener gave up (deadline, client gone) before the tunnel opened."""
        if not self.closed:
            self.closed = True
            self._close_upstream()
            finish(self.ctx)

    # ------------------------------------------------------------------ a non-101 answer
    def relay_head(self, status: int, headers: Headers, length: int | None) -> None:
        ctx = self.ctx
        ctx.upstream_duration = clock.now() - ctx.start
        self.relaying = True
        out: Headers = [(n, v) for n, v in headers if n.lower() not in _SKIP_RESPONSE]
        out.extend(ctx.response_headers)
        ctx.chain.run_response(ctx, status, out)
        if ctx.response_fields is not None:
            out.extend(decode_fields(ctx.response_fields))
        ctx.status = status
        self.cycle.handler_deadline = 0.0
        self.cycle.start_response(status, out, length)

    def relay_body(self, chunk: bytes) -> None:
        if self.relaying:
            self.cycle.write(chunk)

    def relay_done(self) -> None:
        if self.relaying and not self.closed:
            self.cycle.end()
            self._end()

    def _end(self) -> None:
        self.closed = True
        self.cycle.on_cancel = None
        self._close_upstream()
        finish(self.ctx)

    # ------------------------------------------------------------------ the splice
    def switch(self, headers: Headers, rest: bytes) -> None:
        """101 from the upstream: answer the client, take its connection, splice."""
        ctx, cycle, side = self.ctx, self.cycle, self.upstream
        if self.closed or side is None or side.transport is None:
            return
        cycle.on_cancel = None
        cycle.handler_deadline = 0.0
        ctx.upstream_duration = clock.now() - ctx.start
        out: Headers = [(n, v) for n, v in headers if n.lower() != CONTENT_LENGTH]
        out.extend(ctx.response_headers)
        ctx.chain.run_response(ctx, 101, out)
        if ctx.response_fields is not None:
            out.extend(decode_fields(ctx.response_fields))
        ctx.status = 101
        lines: list[bytes] = []
        for name, value in out:
            lines += (name, b": ", value, b"\r\n")
        proto: HttpServerProtocol = cycle.proto
        # The 101 head, without the framing and Connection the listener would add.
        cycle.response_started = True
        cycle.status = 101
        proto.write(b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(lines) + b"\r\n")
        early = proto.detach()
        self.client = client = proto.transport
        client.set_protocol(_ClientSide(self))  # type: ignore[arg-type]
        self.open = True
        self.owner.opened(self)
        self.last_activity = self.loop.time()
        self._arm_idle()
        if early:
            self.from_client(early)
        if rest:
            self.from_upstream(rest)
        if not self.closed:
            proto.read_paused = False
            client.resume_reading()

    def from_client(self, data: bytes) -> None:
        side = self.upstream
        if side is None or side.transport is None or self.closed:
            return
        self.bytes_up += len(data)
        self.up_frames.feed(data)
        self.last_activity = self.loop.time()
        side.transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        client = self.client
        if client is None or self.closed:
            return
        self.bytes_down += len(data)
        self.down_frames.feed(data)
        self.last_activity = self.loop.time()
        client.write(data)

    def pause(self, upstream: bool) -> None:
        """A write buffer is full: stop reading from the side that fills it."""
        if upstream:
            side = self.upstream
            if side is not None and side.transport is not None:
                side.transport.pause_reading()
        elif self.client is not None:
            self.client.pause_reading()

    def resume(self, upstream: bool) -> None:
        if self.closed:
            return
        if upstream:
            side = self.upstream
            if side is not None and side.transport is not None:
                side.transport.resume_reading()
        elif self.client is not None:
            self.client.resume_reading()

    # ------------------------------------------------------------------ the end
    def _arm_idle(self) -> None:
        self.idle_timer = self.loop.call_at(self.last_activity + self.owner.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        if self.loop.time() - self.last_activity >= self.owner.idle_timeout:
            self.going_away()
        else:
            self._arm_idle()

    def going_away(self) -> None:
        """Close both sides with 1001, each only if no frame is half-sent to it."""
        if self.closed:
            return
        side = self.upstream
        if self.client is not None and self.down_frames.at_boundary:
            self.client.write(close_frame(GOING_AWAY, masked=False))
        if side is not None and side.transport is not None and self.up_frames.at_boundary:
            side.transport.write(close_frame(GOING_AWAY, masked=True))
        self.close()

    def close(self) -> None:
        """Either side closed (or the gateway ends the tunnel): close the other, finish."""
        if self.closed:
            return
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self._close_upstream()
        if self.client is not None:
            self.client.close()  # after what is buffered has been written
        self.owner.closed(self)
        cycle = self.cycle
        cycle.content_length = self.bytes_up  # the access event's request_size
        cycle.response_length = self.bytes_down  # and response_size
        finish(self.ctx)
        cycle.proto.connection_lost(None)  # the listener forgets the connection

    def _close_upstream(self) -> None:
        side = self.upstream
        if side is not None and side.transport is not None:
            side.transport.close()
        elif self.task is not None and not self.task.done():
            self.task.cancel()


class Tunnels(Filter):
    """The open tunnels of a worker: their metrics and their end at shutdown.

    A filter for the lifecycle and `samples()` only: it joins no chain."""

    name = "websocket"

    def __init__(self, reply: Any, idle_timeout: float) -> None:
        self.reply = reply  # App._reply: answers a handshake the upstream did not take
        self.idle_timeout = idle_timeout
        self.open: set[Tunnel] = set()
        self.total: dict[str, int] = {}

    def applies_to(self, route: Route | None) -> bool:
        return False

    def start_tunnel(self, ctx: RequestContext, upstream_path: bytes) -> None:
        Tunnel(self, ctx, ctx.pool).start(upstream_path)

    def opened(self, tunnel: Tunnel) -> None:
        self.open.add(tunnel)
        route = tunnel.ctx.route
        rid = route.id if route is not None else "unmatched"
        self.total[rid] = self.total.get(rid, 0) + 1

    def closed(self, tunnel: Tunnel) -> None:
        self.open.discard(tunnel)

    def going_away(self) -> None:
        """Shutdown after the drain timeout: every tunnel gets its 1001 close frame."""
        for tunnel in list(self.open):
            tunnel.going_away()

    async def close(self) -> None:
        self.going_away()

    def samples(self) -> Iterator[Sample]:
        yield WEBSOCKET_CONNECTIONS_ACTIVE, (), float(len(self.open))
        for route, n in self.total.items():
            yield WEBSOCKET_CONNECTIONS_TOTAL, (route,), float(n)


def refuse(ctx: RequestContext) -> Response:
    """`websocket: false` on the route: the upgrade is refused, 400."""
    status, body = error_body(
        "bad_request", ctx.request_id, "WebSocket upgrades are not enabled on this route."
    )
    return Response(status, error_headers(), body, "bad_request")
