"""Upstream connections and their keep-alive pools (httpcore's shape, on asyncio.Protocol).

An `UpstreamConnection` sends one request at a time and hands the parsed response to an
`Exchange` (the proxy's side of the request) through plain method calls, so a response
body goes from the upstream socket to the client socket without a task switch.

The pool's assignment step is synchronous: `acquire_idle()` either returns a live idle
connection or None, and never awaits, so two requests can never be handed the same
connection. Idle connections are reused last-in-first-out: the most recently used one
is the least likely to have been closed by the upstream's idle timer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit

import httptools

from apigate.http import clock
from apigate.http.headers import (
    CONNECTION,
    CONTENT_LENGTH,
    HOP_BY_HOP,
    TRANSFER_ENCODING,
    TRIVIAL_CONNECTION_TOKENS,
    connection_tokens,
    length_mask,
    names_other_fields,
    parse_length,
)

# An idle connection older than this is closed rather than reused: many servers close
# idle keep-alives after 5-75 s, and reusing one they are about to close costs a retry.
POOL_IDLE_TIMEOUT_S: Final = 30.0
_now: Final = clock.now  # a C static: the module attribute would be looked up per call


class UpstreamError(Exception):
    """A failure talking to an upstream; `reason` is the metrics label.

    Class-level (ClassVar), so that compiled, subclasses override them as in plain Python.
    """

    reason: ClassVar[str] = "bad_response"
    code: ClassVar[str] = "bad_gateway"


class ConnectFailed(UpstreamError):
    reason = "connect"
    code = "upstream_unavailable"


class ConnectTimeout(UpstreamError):
    reason = "timeout"
    code = "upstream_timeout"


class ConnectionReset(UpstreamError):
    """The connection closed or reset before the response was complete."""

    reason = "reset"
    code = "upstream_unavailable"


class BadResponse(UpstreamError):
    reason = "bad_response"
    code = "bad_gateway"


class ResponseSink:
    """What an upstream connection reports to while a request is in flight (the proxy's
    Exchange). A base class rather than a Protocol: compiled, calls through it are direct
    C calls instead of attribute lookups."""

    __slots__ = ()

    def cork(self) -> bool:
        """Hold client writes while one upstream read is parsed; True if this call did."""
        raise NotImplementedError

    def uncork(self) -> None:
        raise NotImplementedError

    def on_upstream_head(self, status: int, lines: list[bytes], length: int | None) -> None:
        """The response head: `lines` are its end-to-end fields, serialized (`name`, `: `,
        `value`, CRLF pieces); `length` is its Content-Length, None for a streamed body."""
        raise NotImplementedError

    def on_upstream_body(self, chunk: bytes) -> None:
        raise NotImplementedError

    def on_upstream_complete(self) -> None:
        raise NotImplementedError

    def on_upstream_failed(self, error: UpstreamError) -> None:
        raise NotImplementedError


# Response fields that never reach the client: hop-by-hop ones (RFC 9110 §7.6.1), and
# Content-Length, which the listener writes itself from the parsed length.
_NOT_FORWARDED: Final = HOP_BY_HOP | {CONTENT_LENGTH}
_NOT_FORWARDED_LENGTHS: Final = length_mask(_NOT_FORWARDED)


class ConnState:
    """An upstream connection's states. Final ints rather than an Enum: compiled, they are
    constants compared in C, where an enum member is an attribute lookup on a Python class
    (several per request)."""

    CONNECTING: Final = 0
    IDLE: Final = 1
    ACTIVE: Final = 2
    CLOSED: Final = 3
    NAMES: Final = ("connecting", "idle", "active", "closed")


def _drop_named(lines: list[bytes], named: set[bytes]) -> list[bytes]:
    """`lines` without the fields a Connection header named (they are hop-by-hop too)."""
    kept: list[bytes] = []
    for i in range(0, len(lines), 4):
        if lines[i].lower() not in named:
            kept += lines[i : i + 4]
    return kept


class UpstreamConnection:
    """One keep-alive connection to an upstream (an asyncio protocol by its methods, like
    HttpServerProtocol, so that it compiles to a native class)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.state = ConnState.CONNECTING
        self.requests = 0  # responses completed on this connection
        self.idle_since = 0.0
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.progress = 0  # reads so far: the listener's watchdog tells a stall from a slow body
        # per response
        self.sink: ResponseSink | None = None
        self.head_only = False
        self.lines: list[bytes] = []  # the end-to-end fields so far, serialized
        self.named: set[bytes] | None = None  # fields a Connection header named
        self.status = 0
        self.length: int | None = None  # Content-Length of the response being parsed
        self.chunked = False
        self.until_close = False
        self.keep_alive = True
        self.got_head = False
        self.reset_parser = False

    def __repr__(self) -> str:
        return f"<UpstreamConnection {self.pool.key} {ConnState.NAMES[self.state]} requests={self.requests}>"

    # ------------------------------------------------------------------ predicates
    @property
    def is_usable(self) -> bool:
        """Idle, open, and not past POOL_IDLE_TIMEOUT_S."""
        return (
            self.state == ConnState.IDLE
            and not self.transport.is_closing()
            and _now() - self.idle_since < POOL_IDLE_TIMEOUT_S
        )

    # ------------------------------------------------------------------ request side
    def send(self, sink: ResponseSink, head: bytes, head_only: bool) -> None:
        """Start a request: the head now, the body (if any) through write_body()."""
        self.state = ConnState.ACTIVE
        self.sink = sink
        self.head_only = head_only
        self.got_head = False
        if self.reset_parser:
            # llhttp cannot be told a response answers HEAD, so after one it may still
            # expect a body that never comes: start the next response on a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            self.reset_parser = False
        self.transport.write(head)

    def write_body(self, data: bytes) -> None:
        # The upstream may answer and close while the body is still streaming (an early
        # 401/413); the exchange then ends through its sink. Writing to the closed uvloop
        # transport would raise RuntimeError and kill the proxy task, leaving the client
        # hanging until its request timeout.
        if self.state != ConnState.CLOSED and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self.write_paused and self.state != ConnState.CLOSED:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter

    def close(self) -> None:
        if self.state != ConnState.CLOSED:
            self.state = ConnState.CLOSED
            self.sink = None
            self.transport.close()

    def abort(self) -> None:
        self.state = ConnState.CLOSED
        self.sink = None
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ protocol interface
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.sink is None:
            # Bytes while idle are a protocol violation (or a late response): unusable.
            self.close()
            self.pool.forget(self)
            return
        self.progress += 1
        sink = self.sink
        corked = sink.cork()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("unexpected protocol upgrade"))
        except httptools.HttpParserError as e:
            self._fail(BadResponse(str(e)))
        finally:
            if corked:
                sink.uncork()

    def eof_received(self) -> bool | None:
        if self.sink is not None and self.got_head and self.until_close:
            # RFC 9112 §6.3 rule 8: a body without length ends when the connection does.
            self.keep_alive = False
            self.on_message_complete()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = ConnState.CLOSED
        self.pool.forget(self)
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)
        if self.sink is not None:
            self._fail(ConnectionReset("upstream closed the connection"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w = self.drain_waiter
        if w is not None:
            self.drain_waiter = None
            if not w.done():
                w.set_result(None)

    def pause_reading(self) -> None:
        if self.state != ConnState.CLOSED:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.state != ConnState.CLOSED:
            self.transport.resume_reading()

    # ------------------------------------------------------------------ parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        # Forwarded fields are serialized as they arrive, with the upstream's spelling of
        # the name (as nginx does): no tuple, no second pass, no lowercasing. Only a name as
        # long as a field that is not forwarded is lowered and looked up.
        if _NOT_FORWARDED_LENGTHS >> len(name) & 1:
            # The usual spellings are compared, not lowered: the constants' hashes are known.
            if name == b"Content-Length":
                low = CONTENT_LENGTH
            elif name == b"Connection":
                low = CONNECTION
            else:
                low = name.lower()
            if low in _NOT_FORWARDED:
                if low == CONTENT_LENGTH:
                    self.length = parse_length(value)  # llhttp already rejected a malformed length
                elif low == TRANSFER_ENCODING:
                    self.chunked = True
                elif low == CONNECTION and names_other_fields(value):
                    tokens = connection_tokens(value) - TRIVIAL_CONNECTION_TOKENS
                    self.named = tokens if self.named is None else self.named | tokens
                return
        lines = self.lines
        lines.append(name)  # four appends: compiled, `+= (...)` builds a tuple first
        lines.append(b": ")
        lines.append(value)
        lines.append(b"\r\n")

    def on_headers_complete(self) -> None:
        lines = self.lines
        self.lines = []
        named = self.named
        self.named = None
        status = self.parser.get_status_code()
        if status < 200:
            # Interim responses (100, 103) are not forwarded; llhttp parses the final one next.
            self.length = None
            self.chunked = False
            return
        if named:
            # After the whole head: a field Connection names may come before Connection.
            lines = _drop_named(lines, named)
        self.status = status
        self.got_head = True
        self.keep_alive = self.parser.should_keep_alive()
        length = self.length
        chunked = self.chunked
        self.length = None
        self.chunked = False
        if chunked:
            length = None  # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length
        self.until_close = length is None and not chunked and status not in (204, 304) and not self.head_only
        sink = self.sink
        if sink is not None:
            sink.on_upstream_head(status, lines, length)
        if self.head_only:
            self.reset_parser = True
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        sink = self.sink
        # got_head: llhttp reads a body for an interim 1xx that declares a length (found by
        # the fuzzer: `104` + `Content-Length: 2`); those bytes reached the client before
        # any status line.
        if sink is not None and self.got_head:
            sink.on_upstream_body(body)

    def on_message_complete(self) -> None:
        sink = self.sink
        if sink is None or not self.got_head:
            return
        self.sink = None
        self.requests += 1
        sink.on_upstream_complete()

    def _fail(self, error: UpstreamError) -> None:
        sink = self.sink
        self.sink = None
        if self.state != ConnState.CLOSED:
            self.abort()
        if sink is not None:
            sink.on_upstream_failed(error)


class UpstreamPool:
    """Keep-alive connections to one upstream host (`pool_max_idle_per_host` idle at most)."""

    def __init__(
        self,
        base_url: str,
        *,
        max_idle: int,
        connect_timeout: float,
        timeout: float = 30.0,
        verify_tls: bool = True,
        ca_path: str | None = None,
    ) -> None:
        """`timeout`: the upstream's timeout_secs, the longest wait for its answer (and the
        longest silence while its body streams); the proxy reads it from here."""
        parts = urlsplit(base_url)
        self.loop = asyncio.get_event_loop()
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        self.key = f"{parts.scheme}://{self.host}:{self.port}"
        netloc_host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (netloc_host if default_port else f"{netloc_host}:{self.port}").encode("idna")
        self.host_line = b" HTTP/1.1\r\nhost: " + self.host_header + b"\r\n"  # ends the request line
        self.base_path = parts.path.rstrip("/").encode("latin-1")
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.ssl: ssl.SSLContext | None = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=ca_path)
            if not verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            self.ssl = ctx
        self.idle: list[UpstreamConnection] = []
        self.connecting = 0
        self.active = 0
        # A target of a balanced upstream (gateway/balancer.py): its successes are
        # reported too, so they end through the proxy's `finished` callback.
        self.watched = False
        # Whether a 502/503 answer to (request context, status) is retried on another
        # target instead of forwarded (retries.on: status_502/status_503); None: never.
        self.retry_status: Callable[[Any, int], bool] | None = None

    def __repr__(self) -> str:
        # httpcore's habit: the counts a reader of a log line or a debugger needs.
        idle = len(self.idle)
        total = idle + self.active + self.connecting
        counts = f"idle={idle} active={self.active} connecting={self.connecting} total={total}"
        return f"<UpstreamPool {self.key} {counts}>"

    def acquire_idle(self) -> UpstreamConnection | None:
        """A reusable idle connection, or None. Synchronous: no other request can take it."""
        idle = self.idle
        if idle:
            # The clock now, not the request's start: a request that waited (pipelined, or
            # on a filter) would otherwise accept a connection idle for too long.
            oldest_ok = _now() - POOL_IDLE_TIMEOUT_S
            while idle:
                conn = idle.pop()
                # is_usable, inlined: this runs once per proxied request.
                if (
                    conn.state == ConnState.IDLE
                    and conn.idle_since > oldest_ok
                    and not conn.transport.is_closing()
                ):
                    conn.state = ConnState.ACTIVE
                    self.active += 1
                    return conn
                conn.close()
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection, within connect_timeout (TLS handshake included)."""
        self.connecting += 1
        try:
            factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(self)  # noqa: E731
            try:
                async with asyncio.timeout(self.connect_timeout):
                    # A protocol by duck typing (see the class), which typeshed's bound rejects.
                    _, conn = await self.loop.create_connection(  # type: ignore[type-var]
                        factory,
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl else None,
                    )
            except TimeoutError:
                raise ConnectTimeout(f"connect to {self.key} timed out") from None
            except ssl.SSLError as e:
                raise ConnectFailed(f"TLS to {self.key} failed: {e.reason}") from None
            except OSError as e:
                raise ConnectFailed(f"connect to {self.key} failed: {e.strerror or e}") from None
        finally:
            self.connecting -= 1
        conn.state = ConnState.ACTIVE
        self.active += 1
        return conn

    def release(self, conn: UpstreamConnection, reusable: bool, now: float = 0.0) -> None:
        """Return a connection after its response; close it unless it can serve another.

        `now`: the request clock when the caller already read it, or a moment before (an
        earlier time only makes the connection look idle for longer: never reused stale).
        """
        self.active -= 1
        if (
            reusable
            and conn.keep_alive
            and conn.state == ConnState.ACTIVE
            and conn.sink is None
            and len(self.idle) < self.max_idle
        ):
            conn.state = ConnState.IDLE
            conn.idle_since = now or _now()
            self.idle.append(conn)
        else:
            conn.close()

    def forget(self, conn: UpstreamConnection) -> None:
        """Called when a connection closes: it must never be handed out again."""
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
