"""The listener: HTTP/1.1 on asyncio.Protocol + httptools (llhttp).

One `HttpServerProtocol` per client connection holds the connection's state; each request
is a `RequestCycle` handed to the handler coroutine (the gateway), which answers through
the cycle's response methods. The listener knows nothing about routes or filters.

Shape taken from uvicorn's httptools_impl: pipelined requests wait in a deque and are
answered strictly in order (RFC 9112 §9.3.2); reading pauses when a request body or the
pipeline backs up; writing backpressure is forwarded to whoever produces the response
body (the upstream connection) through `RequestCycle.flow`.

Timeouts cost nothing per request: one watchdog timer per connection fires at the
earliest pending deadline and re-arms itself; a request only stores float deadlines.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

import httptools
from mypy_extensions import mypyc_attr

from apigate.http import clock
from apigate.http.body import BodyReader
from apigate.http.chunks import chunk_size
from apigate.http.errors import HttpError, error_body, error_headers
from apigate.http.headers import (
    CONNECTION,
    CONTENT_LENGTH,
    EXPECT,
    HOST,
    PROXY_CONNECTION,
    TRANSFER_ENCODING,
    X_REQUEST_ID,
    Headers,
    chunk_size_line,
    connection_named,
    content_length_line,
    is_valid_host,
    names_other_fields,
    parse_length,
    status_line,
)

log: Final = logging.getLogger("apigate.http")

CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
UNCORK_JOIN_MAX: Final = 256 * 1024  # corked writes up to this size are joined, larger ones vectored
MAX_PIPELINED: Final = 32  # queued requests per connection before reading pauses
_NOTED: Final = frozenset(
    {CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, X_REQUEST_ID, HOST, CONNECTION, PROXY_CONNECTION}
)
INF: Final = float("inf")
# Lingering close (nginx's lingering_close): after an answer given while the client was
# still sending, read and discard for a while before closing, else the kernel answers
# the unread bytes with a reset that can destroy the answer in the client's buffers.
LINGER_IDLE_S: Final = 2.0  # close once the client has been silent this long
LINGER_MAX_S: Final = 10.0  # and in any case this long after the answer
# The methods' names as shared str objects: no decoding, and their hashes (route and
# idempotency lookups) are computed once.
_METHODS: Final = {m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
_now: Final = clock.now  # a C static: the module attribute would be looked up per call
# A chunk-size of 16 hex digits or more (RFC 9112 §7.1 sets no bound; llhttp only refuses
# what overflows 64 bits) is refused as malformed whatever max_body_bytes says.
MAX_CHUNK_SIZE: Final = 16**15 - 1
CHUNKED: Final = b"chunked"
# An int, not b"_": `bytes in bytes` first tries the needle as an int and formats a
# TypeError before searching (~2k instructions a header); an int goes straight to memchr.
UNDERSCORE: Final = 0x5F


class FlowTarget(Protocol):
    """Whoever produces a response body: paused while the client cannot keep up."""

    progress: int  # bumped on every read from the producer: the watchdog's sign of life

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Limits:
    """Per-listener limits, copied from `server.*` once."""

    __slots__ = (
        "allow_underscores",
        "idle_timeout",
        "max_body_bytes",
        "max_connections",
        "max_header_bytes",
        "request_timeout",
    )

    def __init__(
        self,
        *,
        max_connections: int,
        idle_timeout: float,
        request_timeout: float,
        max_header_bytes: int,
        max_body_bytes: int,
        allow_underscores: bool = False,
    ) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        # server.allow_underscores_in_headers: false drops `X_User_ID`-style names, as nginx
        # does, so an upstream that folds '_' into '-' cannot see a forged twin.
        self.allow_underscores = allow_underscores


class ServerState:
    """Process-wide listener state shared by every connection."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections: set[HttpServerProtocol] = set()
        self.draining = False
        self.in_flight = 0
        # Told of every answer the listener gives on its own, without the handler (400 for
        # a malformed head, 431, 408 before the head ended, 503 overloaded), with the
        # error code: the gateway counts and logs them like any other answer.
        self.on_rejected: Callable[[RequestCycle, str], None] | None = None

    def drain(self) -> None:
        """Stop keep-alive everywhere: idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.shutdown()


Handler = Callable[["RequestCycle"], None]
"""Called once per request, synchronously; it must end with `cycle.complete()` (now or later)."""


# One freed instance is kept for the next request (compiled): per-request objects are
# made and freed in turn, so most requests skip the allocator.
@mypyc_attr(free_list_len=1)
class RequestCycle:
    """One request and its response on a client connection."""

    # Per-request defaults live on the class: a request only pays for what differs.
    # (No __slots__: class-level defaults are what makes construction cheap.)
    expect_continue = False
    response_started = False
    response_complete = False
    chunked_response = False
    status = 0
    request_id: str | None = None  # set by the gateway; the correlation id
    flow: FlowTarget | None = None  # produces the response body; paused with the client
    on_cancel: Callable[[], None] | None = None  # set by the handler while it works
    finished = False
    timed_out = False
    # Set by the handler while it waits for the upstream to take more of the request body
    # (the upstream stopped reading): a timeout then is the upstream's, 504, not 408.
    upstream_blocked = False
    # A deadline of the handler's own (the proxy's upstream timeout), 0.0 when none: when
    # it passes, the watchdog calls `on_deadline(now)`, which answers (`time_out()`), cuts
    # the connection, or sets a later one. The listener knows no more about it than that.
    handler_deadline = 0.0
    on_deadline: Callable[[float], None] | None = None
    client_request_id: bytes | None = None  # the client's X-Request-ID, as sent
    dropped_header: bytes | None = None  # a header name the listener dropped (an underscore)
    # For the access log's response_size (logs/filter.py): the declared Content-Length,
    # else the body bytes that went through write().
    response_length: int | None = None
    body_bytes = 0
    # Protocol switching (RFC 9110 §7.8; WebSocket, RFC 6455 §4): the request asked for an
    # Upgrade, and the bytes the client sent after its head (the new protocol's first ones),
    # kept for whoever takes the connection over (`HttpServerProtocol.detach`).
    upgrade = False
    upgrade_rest = b""

    def __init__(
        self,
        proto: HttpServerProtocol,
        method: str,
        target: bytes,
        headers: Headers,
        http_version: str,
        keep_alive: bool,
        content_length: int | None,
        body: BodyReader | None,
        start: float,
    ) -> None:
        self.proto = proto
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.body = body
        self.client: str = proto.client_ip
        self.start = start  # clock.now() when its request line began to arrive
        self.deadline = start + proto.limits.request_timeout
        self.request_complete = body is None
        self.write_body = method != "HEAD"

    # ------------------------------------------------------------------ response API
    def send_response(self, status: int, headers: Headers, body: bytes) -> None:
        """A complete response with a known body (errors, local replies)."""
        self.start_response(status, headers, len(body))
        if body and self.write_body:
            self.proto.write(body)
        self.end()

    def start_response(self, status: int, headers: Headers, content_length: int | None) -> None:
        """Write the status line and headers; `content_length=None` means a streamed body."""
        lines: list[bytes] = []
        for name, value in headers:
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
        self.start_response_lines(status, lines, content_length)

    def start_response_lines(self, status: int, lines: list[bytes], content_length: int | None) -> None:
        """`start_response` with the fields already serialized: `name`, `: `, `value`, CRLF
        pieces (the proxy's way: it forwards the upstream's fields as they were parsed).
        The listener adds the status line, framing, Connection and the blank line to
        `lines` itself: the list is the caller's no more."""
        assert not self.response_started
        self.response_started = True
        self.status = status
        proto = self.proto
        if proto.closing or not self.request_complete or (proto.state.draining and not proto.pipeline):
            # An unread request body leaves the connection unusable. Draining ends keep-alive
            # after the last request already received (pipelined ones are still answered).
            self.keep_alive = False
        out = lines
        out.insert(0, status_line(status))
        if content_length is not None and status != 204:  # RFC 9110 §8.6: none in a 204
            out.append(content_length_line(content_length))
            self.response_length = content_length if self.write_body else 0
        elif status >= 200 and status not in (204, 304) and self.write_body:
            if self.http_version == "1.1":
                self.chunked_response = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                # HTTP/1.0 has no chunked coding: the end of the body is the close.
                self.keep_alive = False
        if not self.keep_alive:
            out.append(b"connection: close\r\n")
        elif self.http_version == "1.0":
            out.append(b"connection: keep-alive\r\n")
        out.append(b"\r\n")
        self.proto.write(b"".join(out))

    def write(self, chunk: bytes) -> None:
        if not self.write_body or not chunk or self.proto.closing:
            return
        self.body_bytes += len(chunk)  # access log's response_size
        if self.chunked_response:
            proto = self.proto
            proto.write(chunk_size_line(len(chunk)))
            proto.write(chunk)
            proto.write(b"\r\n")
        else:
            self.proto.write(chunk)

    def end(self) -> None:
        if self.response_complete:
            return
        self.response_complete = True
        if self.chunked_response:
            self.proto.write(b"0\r\n\r\n")

    def complete(self) -> None:
        """The handler is done with this request (the response is written or abandoned)."""
        if not self.finished:
            self.finished = True
            # The handler's callbacks are bound methods of objects that hold this cycle:
            # dropping them here frees the request by reference counting, not by the
            # cyclic GC (which cost ~4k instructions a request when they stayed).
            self.on_deadline = None
            self.on_cancel = None
            self.proto._finish(self)

    def cancel(self) -> None:
        """Stop the handler's work (deadline passed, client gone); it completes the cycle."""
        cb = self.on_cancel
        self.on_cancel = None
        if cb is not None:
            cb()

    def set_deadline(self, when: float, on_deadline: Callable[[float], None]) -> None:
        """Call `on_deadline(now)` at `when` unless the request is over by then."""
        self.handler_deadline = when
        self.on_deadline = on_deadline
        proto = self.proto
        if when < proto.watch_at:
            proto.watch(when)

    def time_out(self) -> None:
        """No response in time: 408 while the client is still sending, else 504; the
        handler's work is cancelled and the connection closes after the answer."""
        self.timed_out = True
        self.keep_alive = False
        self.send_error(self.timeout_code(), self.request_id)
        self.cancel()
        self.complete()

    def timeout_code(self) -> str:
        """Whose fault a timeout is: the client's while it is still sending (unless the
        upstream is what stopped the upload), else the upstream's (nginx answers 504 for
        an upstream that stopped reading, proxy_send_timeout)."""
        if not self.request_complete and not self.upstream_blocked:
            return "request_timeout"
        return "upstream_timeout"

    def send_error(self, code: str, correlation_id: str | None, extra: Headers | None = None) -> None:
        status, body = error_body(code, correlation_id)
        headers = error_headers(extra)
        if correlation_id:
            # These replies (408/413/504 from the listener) bypass the filters' on_response,
            # which is where X-Request-ID is added to every other response.
            headers.append((X_REQUEST_ID, correlation_id.encode("ascii")))
        self.send_response(status, headers, body)

    def send_continue(self) -> None:
        """Answer `Expect: 100-continue` once the gateway decides to read the body (RFC 9110 §10.1.1)."""
        if self.expect_continue and not self.response_started:
            self.expect_continue = False
            self.proto.write(CONTINUE_100)


class HttpServerProtocol:
    """A client connection: parser callbacks in, request cycles out.

    An asyncio protocol by its methods, not by inheritance: a subclass of the interpreted
    asyncio.Protocol could not be a native class once compiled (see apigate/_native.py).
    """

    def __init__(self, handler: Handler, state: ServerState, scheme: str = "http") -> None:
        # global
        self.handler = handler
        self.state = state
        self.limits = state.limits
        self.loop = asyncio.get_running_loop()
        self.scheme = scheme
        self.scheme_b = scheme.encode("ascii")
        # per connection
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.client_ip_b = b""
        self.closing = False
        self.lingering = False  # answered and half-closed: discarding what the client still sends
        self.linger_until = 0.0
        self.read_paused = False
        self.write_paused = False
        self.active: RequestCycle | None = None
        self.pipeline: deque[RequestCycle] = deque()
        self.last_activity = 0.0
        self.watch_at = INF  # when the watchdog fires next (INF: not armed)
        self.watchdog: asyncio.TimerHandle | None = None
        self.out: list[bytes] | None = None  # writes held back while corked
        self.valid_host = b""  # the last Host value found valid on this connection
        self.dropped: bytes | None = None  # a header name dropped from the request being parsed
        # per request (being parsed)
        self.url = b""
        self.headers: Headers = []
        self.header_bytes = 0
        self.raw_head_bytes = 0  # bytes of reads that continued an unfinished head
        self.in_headers = False
        self.request_start = 0.0
        self.parsing: RequestCycle | None = None

    # ------------------------------------------------------------------ protocol interface
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else "unix"
        self.client_ip_b = self.client_ip.encode("ascii")
        self.last_activity = self.loop.time()
        if len(self.state.connections) >= self.limits.max_connections or self.state.draining:
            # Over the limit: answer 503 rather than a silent RST, so clients see why.
            self._reject("overloaded" if not self.state.draining else "draining")
            self.closing = True
            self.transport.close()
            return
        self.state.connections.add(self)
        self._arm(self.last_activity + self.limits.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.state.connections.discard(self)
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.pipeline.clear()
        cycle = self.active
        if cycle is not None:
            if cycle.body is not None:
                cycle.body.abort()
            cycle.cancel()
            cycle.complete()

    def eof_received(self) -> bool | None:
        if self.closing:
            return None  # lingering, or closing anyway: the transport closes now
        # A client may half-close after its last request (`shutdown(SHUT_WR)`); keep the
        # write side open to answer what is in flight, then close.
        if self.active is not None:
            # Every complete request already received is still answered, in order; the
            # last answer says `connection: close`. A request cut off by the EOF is dropped.
            if self.parsing is not None and self.parsing.body is not None:
                self.parsing.body.abort()
            last = self.pipeline[-1] if self.pipeline else self.active
            last.keep_alive = False
            return True
        return None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            if self.lingering:
                self.last_activity = self.loop.time()
            return
        if self.in_headers:
            # A read inside an unfinished head. llhttp reports a header only once it is
            # complete, so one that never ends is bounded by raw bytes, separately: adding
            # them to header_bytes counted completed headers twice (and a body that
            # followed the head in the same read), giving 431 to valid requests whose head
            # arrived in pieces.
            self.raw_head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except HttpError as e:
            self._fail(e.code)
            return
        except httptools.HttpParserUpgrade as e:
            active = self.active
            if active is not None and active.upgrade and not active.response_started and not self.pipeline:
                # The handler may still switch protocols (a WebSocket tunnel, once the
                # upstream agrees): keep what followed the head and read no more until it
                # decides. Any other answer closes the connection after it (keep_alive).
                active.upgrade_rest = data[e.args[0] :]
                self.pause_reading()
                return
            # No protocol switching: the request is proxied as plain HTTP (Upgrade is
            # hop-by-hop and dropped), and the connection closes after it.
            if self.parsing is not None:
                self.parsing.keep_alive = False
            for cycle in (self.active, *self.pipeline):
                if cycle is not None:
                    cycle.keep_alive = False
            if self.active is None and not self.pipeline:
                # Answered within the handler call (a local reply): llhttp reads nothing
                # after an upgrade, so the connection must end now, not at the idle timeout.
                self._close()
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            self._fail(cause.code if isinstance(cause, HttpError) else "bad_request")
            return
        except httptools.HttpParserError:
            self._fail("bad_request")
            return
        if self.in_headers and self.raw_head_bytes > 2 * self.limits.max_header_bytes:
            self._fail("headers_too_large")

    def pause_writing(self) -> None:
        self.write_paused = True
        cycle = self.active
        if cycle is not None and cycle.flow is not None:
            cycle.flow.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        cycle = self.active
        if cycle is not None and cycle.flow is not None:
            cycle.flow.resume_reading()

    # ------------------------------------------------------------------ parser callbacks
    # No on_message_begin: the request line always starts with the URL, so on_url opens
    # the request (one parser callback fewer per request).
    def on_url(self, url: bytes) -> None:
        if self.in_headers:
            self.url += url
            if len(self.url) > self.limits.max_header_bytes:
                raise HttpError("headers_too_large")
            return
        self.url = url
        self.headers = []
        self.dropped = None
        self.header_bytes = len(url)
        self.raw_head_bytes = 0
        self.in_headers = True
        self.request_start = now = _now()  # to the ns: durations are measured from it
        if self.active is None and self.watch_at > now + self.limits.request_timeout:
            self._arm(now + self.limits.request_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > self.limits.max_header_bytes:
            raise HttpError("headers_too_large")
        if UNDERSCORE in name and not self.limits.allow_underscores:
            self.dropped = name  # the gateway logs it at DEBUG (cycle.dropped_header)
            return
        # Host is in every request: its usual spelling is compared, not lowered and hashed.
        self.headers.append((HOST if name == b"Host" else name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        raw_method: bytes = parser.get_method()
        method = _METHODS.get(raw_method)
        if method is None:
            method = raw_method.decode("ascii")
        content_length: int | None = None
        expect = False
        chunked = False
        request_id: bytes | None = None
        hosts = 0
        host = b""
        connection = False
        named: list[bytes] | None = None
        codings = 0
        for name, value in self.headers:
            if name in _NOTED:
                if name == HOST:
                    hosts += 1
                    host = value
                elif name == CONTENT_LENGTH:
                    content_length = parse_length(value)  # llhttp already rejected non-numeric values
                elif name == X_REQUEST_ID:
                    request_id = value
                elif name == EXPECT:
                    if value.lower() != b"100-continue":
                        raise HttpError("bad_request")
                    expect = True
                elif name in (CONNECTION, PROXY_CONNECTION):
                    connection = True
                    if name == CONNECTION and names_other_fields(value):
                        if named is None:
                            named = []
                        named.append(value)
                else:
                    # nginx's rule: only `chunked` itself is a coding we take (501 for
                    # others, RFC 9112 §6.1), and one Transfer-Encoding field.
                    codings += 1
                    if codings > 1:
                        raise HttpError("bad_request")
                    if value != CHUNKED and value.strip().lower() != CHUNKED:
                        raise HttpError("not_implemented")
                    chunked = True
        keep_alive: bool = parser.should_keep_alive()
        # llhttp keeps a connection alive by default only for HTTP/1.1 (it accepts 0.9,
        # 1.0, 1.1 and 2.0): without a Connection header (nor Proxy-Connection, which
        # llhttp reads the same way), keep-alive means 1.1, which spares
        # get_http_version() (it formats a new string) on nearly every request.
        http_version: str = "1.1" if keep_alive and not connection else parser.get_http_version()
        if http_version != "1.1" and http_version != "1.0":
            # llhttp also reads `HTTP/2.0` and `HTTP/0.9` request lines: not served here.
            raise HttpError("http_version_not_supported")
        if hosts > 1 or (hosts == 0 and http_version == "1.1") or not self._host_ok(host):
            # RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in 1.0, and it is
            # `uri-host [":" port]`; anything else is a 400, so the upstream never has to
            # guess which authority was meant.
            raise HttpError("bad_request")
        if chunked and http_version == "1.0":
            raise HttpError("bad_request")  # RFC 9112 §6.1: no Transfer-Encoding in 1.0
        if named is not None:
            # Fields the client's Connection names go now, before the gateway adds its own
            # (X-User-ID, claim headers): a client cannot make the gateway drop those.
            drop = connection_named(named)
            if b"upgrade" in drop and parser.should_upgrade():
                drop = drop - {b"upgrade"}  # the protocol asked for: the gateway reads it (WebSocket)
            if drop:
                self.headers = [h for h in self.headers if h[0] not in drop]
        body: BodyReader | None = None
        if chunked or (content_length is not None and content_length > 0):
            max_body = self.limits.max_body_bytes
            if max_body and content_length is not None and content_length > max_body:
                raise HttpError("payload_too_large")
            body = BodyReader(self, max_body)
        self.in_headers = False
        cycle = RequestCycle(
            self,
            method,
            self.url,
            self.headers,
            http_version,
            keep_alive,
            None if chunked else content_length,
            body,
            self.request_start,
        )
        if self.dropped is not None:
            cycle.dropped_header = self.dropped
            self.dropped = None
        if expect:
            cycle.expect_continue = True
        if connection and parser.should_upgrade():  # only requests with a Connection header ask
            cycle.upgrade = True
            cycle.keep_alive = False  # llhttp reads nothing after an upgrade request
        if request_id is not None:
            cycle.client_request_id = request_id
        self.parsing = cycle
        if self.active is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            if len(self.pipeline) >= MAX_PIPELINED:
                self.pause_reading()

    def _host_ok(self, host: bytes) -> bool:
        """is_valid_host, remembered per connection: a keep-alive client sends the same
        Host on every request, and comparing it costs less than validating it again."""
        if host == self.valid_host:
            return True
        if is_valid_host(host):
            self.valid_host = host
            return True
        return False

    def on_chunk_header(self) -> None:
        """A chunk-size line was parsed: refuse a chunk that could never fit at once, not
        when its bytes have trickled in (or the request timeout passed)."""
        size = chunk_size(self.parser)
        if size <= 0:
            return
        if size > MAX_CHUNK_SIZE:
            raise HttpError("bad_request")
        cycle = self.parsing
        max_body = self.limits.max_body_bytes
        if (
            max_body
            and cycle is not None
            and cycle.body is not None
            and cycle.body.received + size > max_body
        ):
            raise HttpError("payload_too_large")

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is not None and cycle.body is not None:
            cycle.body.feed(body)

    def on_message_complete(self) -> None:
        cycle = self.parsing
        if cycle is None:
            return
        self.parsing = None
        cycle.request_complete = True
        if cycle.body is not None:
            cycle.body.finish()

    # ------------------------------------------------------------------ cycle management
    def _start(self, cycle: RequestCycle) -> None:
        self.active = cycle
        self.state.in_flight += 1
        if cycle.deadline < self.watch_at:
            self._arm(cycle.deadline)
        try:
            self.handler(cycle)
        except Exception:
            log.exception("request handler failed")
            if not cycle.response_started and not self.closing:
                cycle.keep_alive = False
                cycle.send_error("internal_error", cycle.request_id)
            cycle.complete()

    def _finish(self, cycle: RequestCycle) -> None:
        """Called once per cycle through `cycle.complete()`."""
        self.state.in_flight -= 1
        cycle.flow = None
        if self.closing:
            return
        if not cycle.response_complete or not cycle.keep_alive or not cycle.request_complete:
            self._close()
            return
        self.active = None
        # The request clock, not loop.time(): the same CLOCK_MONOTONIC, cheaper to read from
        # here, and at most a millisecond ahead (the watchdog re-arms if it fires that early).
        self.last_activity = _now()
        if self.pipeline:
            self._start(self.pipeline.popleft())
            if self.read_paused and len(self.pipeline) < MAX_PIPELINED // 2:
                self.resume_reading()
        elif self.parsing is None and self.read_paused:
            self.resume_reading()

    def _fail(self, code: str) -> None:
        """A protocol-level error: answer it if the client is owed an answer, then close."""
        active = self.active
        if active is not None and self.parsing is active:
            # The request being handled broke its own framing or limits (e.g. body too large).
            active.keep_alive = False
            if not active.response_started:
                active.send_error(code, active.request_id)
            active.cancel()
            active.complete()
            self._close(linger=True)
            return
        elif active is None and not self.pipeline:
            self._reject(code)
        else:
            # Earlier pipelined requests are still being answered; the bad one ends the connection.
            for cycle in (self.active, *self.pipeline):
                if cycle is not None:
                    cycle.keep_alive = False
            self.parsing = None
            self.pause_reading()
            return
        self._close(linger=True)

    def _reject(self, code: str) -> None:
        """Answer an error the listener found itself (no handler saw the request), and
        tell `state.on_rejected`, so that it is counted and logged like any answer."""
        if self.in_headers:
            raw = self.parser.get_method()
            method = _METHODS.get(raw) or raw.decode("latin-1")
            target = self.url
            headers = self.headers
        else:
            method, target, headers = "-", b"", []  # nothing of a request was read
        start = self.request_start if self.in_headers else _now()
        cycle = RequestCycle(self, method, target, headers, "1.1", False, None, None, start)
        cycle.finished = True  # never handled: nothing to complete
        cycle.send_error(code, None)
        hook = self.state.on_rejected
        if hook is not None:
            try:
                hook(cycle, code)
            except Exception:
                log.exception("on_rejected failed")

    def _close(self, linger: bool = False) -> None:
        """Close; `linger` when the client may still be sending (after a protocol error)."""
        if not self.closing:
            if self.out:
                self.uncork()
            self.closing = True
            active = self.active
            unread = (
                linger
                or self.parsing is not None
                or self.in_headers
                or (active is not None and not active.request_complete)
            )
            if unread and self.transport.can_write_eof():
                self._linger()
            else:
                self.transport.close()

    def _linger(self) -> None:
        """Half-close after the answer, discard the rest of the request, then close."""
        self.lingering = True
        now = self.loop.time()
        self.last_activity = now
        self.linger_until = now + LINGER_MAX_S
        self.transport.write_eof()  # FIN once the answer has left
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._arm(now + LINGER_IDLE_S)

    def abort_response(self) -> None:
        """The response broke after it started: closing is the only way to tell the client."""
        self._close()

    def detach(self) -> bytes:
        """Hand the connection over after a `101 Switching Protocols` (RFC 9110 §15.2.2):
        the caller sets its own protocol on `self.transport` and resumes reading. Returns the
        bytes the client sent after its request head. The listener's timeouts stop; the
        connection stays in `state.connections` (draining waits for it) until the new owner
        ends it with `connection_lost`."""
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.watch_at = -INF  # never re-armed: `watch()` only arms earlier deadlines
        cycle = self.active
        rest = b""
        if cycle is not None:
            rest, cycle.upgrade_rest = cycle.upgrade_rest, b""
            cycle.handler_deadline = 0.0
        return rest

    def shutdown(self) -> None:
        """Drain: close if idle; else answer every request already received (the active one
        and those pipelined behind it), the last with `connection: close`, and read no more."""
        if self.active is None and self.parsing is None:
            self._close()
            return
        last = self.pipeline[-1] if self.pipeline else self.active
        if self.parsing is not None and self.parsing is not last:
            # A request still arriving that is not queued yet (its head is incomplete).
            last = self.parsing
        if last is not None:
            last.keep_alive = False

    # ------------------------------------------------------------------ output
    def write(self, data: bytes) -> None:
        if self.out is not None:
            self.out.append(data)
        elif not self.closing:
            self.transport.write(data)

    def cork(self) -> bool:
        """Hold writes until `uncork()`; True if this call started holding.

        A small response arrives from the upstream in one read: head and body go out in
        one write instead of two (one syscall, one TCP segment), and pipelined answers
        produced in one read leave together.
        """
        if self.out is None:
            self.out = []
            return True
        return False

    def uncork(self) -> None:
        out = self.out
        self.out = None
        if out and not self.closing:
            n = len(out)
            if n == 1:
                self.transport.write(out[0])
            elif n == 2 and len(out[0]) + len(out[1]) <= UNCORK_JOIN_MAX:
                self.transport.write(out[0] + out[1])  # the usual pair: head, small body
            else:
                size = 0
                for chunk in out:
                    size += len(chunk)
                if size <= UNCORK_JOIN_MAX:
                    self.transport.write(b"".join(out))
                else:
                    self.transport.writelines(out)

    # ------------------------------------------------------------------ flow control
    def pause_reading(self) -> None:
        if not self.read_paused and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    # ------------------------------------------------------------------ timeouts
    def watch(self, when: float) -> None:
        """Make sure the watchdog fires no later than `when`."""
        if when < self.watch_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.watch_at = when
        self.watchdog = self.loop.call_at(when, self._on_watchdog)

    def _on_watchdog(self) -> None:
        self.watchdog = None
        self.watch_at = INF
        if self.closing:
            if self.lingering:
                now = self.loop.time()
                idle_end = self.last_activity + LINGER_IDLE_S
                if now >= idle_end or now >= self.linger_until:
                    self.transport.close()
                else:
                    self._arm(min(idle_end, self.linger_until))
            return
        now = self.loop.time()
        cycle = self.active
        if cycle is not None:
            at = cycle.handler_deadline
            if at and now >= at:
                cycle.handler_deadline = 0.0
                on_deadline = cycle.on_deadline
                if on_deadline is not None:
                    on_deadline(now)  # answers, cuts, or sets a later handler deadline
                if self.closing or self.active is not cycle:
                    return  # answered (and closing) or cut
                at = cycle.handler_deadline
            if not cycle.response_started:
                deadline = cycle.deadline
                if at and at < deadline:
                    deadline = at
                if now >= deadline:
                    cycle.time_out()
                    return
                self._arm(deadline)
            elif at:
                self._arm(at)
            else:
                self._arm(now + self.limits.request_timeout)
        elif self.in_headers or self.parsing is not None:
            deadline = self.request_start + self.limits.request_timeout
            if now >= deadline:
                self._fail("request_timeout")
                return
            self._arm(deadline)
        else:
            deadline = self.last_activity + self.limits.idle_timeout
            if now >= deadline:
                self._close()
                return
            self._arm(deadline)


def make_protocol_factory(handler: Handler, state: ServerState, scheme: str) -> Callable[[], Any]:
    def factory() -> HttpServerProtocol:
        return HttpServerProtocol(handler, state, scheme)

    return factory
