"""The listener (HttpServerProtocol) driven through a fake transport on a real loop, as
uvicorn's tests/protocols/test_http.py drives its protocols: bytes in through
`data_received`, assertions on the bytes written, the transport's flow-control calls and
its closing. The handler is a few lines of test code, so these tests know nothing of the
gateway. The socket-level behaviour stays covered by tests/integration.
"""

from __future__ import annotations

import asyncio

import pytest
from cycles import limits, serve
from transports import FakeTransport, Response, parse_responses, run_in_loop, settle

from apigate.http.body import HIGH_WATER, ClientDisconnected
from apigate.http.server import MAX_PIPELINED, RequestCycle, ServerState

GET = b"GET /a HTTP/1.1\r\nHost: example\r\n\r\n"
TEXT = [(b"content-type", b"text/plain")]


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: example\r\n\r\n".encode()


def answer(cycle: RequestCycle, body: bytes = b"ok", status: int = 200) -> None:
    cycle.send_response(status, TEXT, body)
    cycle.complete()


def echo(cycle: RequestCycle) -> None:
    """Answers at once with the request's method and target."""
    answer(cycle, cycle.method.encode() + b" " + cycle.target)


class Held:
    """A handler that keeps each request for the test to answer (an upstream that waits)."""

    def __init__(self) -> None:
        self.cycles: list[RequestCycle] = []

    def __call__(self, cycle: RequestCycle) -> None:
        self.cycles.append(cycle)


def one(data: bytes) -> Response:
    responses = parse_responses(data)
    assert len(responses) == 1, responses
    return responses[0]


def ended(transport: FakeTransport) -> bool:
    """The client has seen the connection end: closed, or half-closed after the answer
    (the listener's lingering close, which also ends a request answered while its parse
    was still in progress)."""
    return transport.closed or transport.eof_written


def assert_error(response: Response, status: int, code: str) -> None:
    """A gateway error: its status, a JSON body naming the code, and the connection ends."""
    assert response.status == status
    assert response.headers[b"content-type"] == b"application/json"
    assert response.json()["error"] == code
    assert response.headers[b"connection"] == b"close"


# ---------------------------------------------------------------------- requests, keep-alive


@run_in_loop
async def test_request_is_answered_and_connection_kept_alive() -> None:
    _, transport = serve(echo)
    transport.protocol.data_received(GET)
    response = one(transport.take())
    assert (response.status, response.body) == (200, b"GET /a")
    assert b"connection" not in response.headers
    assert response.headers[b"content-length"] == b"6"
    # The same connection serves the next request.
    transport.protocol.data_received(get("/b"))
    assert one(transport.take()).body == b"GET /b"
    await settle()
    assert not ended(transport)


@run_in_loop
async def test_connection_close_request_is_answered_then_closed() -> None:
    _, transport = serve(echo)
    transport.protocol.data_received(b"GET /a HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n")
    response = one(transport.take())
    assert response.status == 200
    assert response.headers[b"connection"] == b"close"
    assert ended(transport)


@run_in_loop
async def test_http10_closes_unless_keep_alive_is_asked() -> None:
    _, transport = serve(echo)
    transport.protocol.data_received(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    response = one(transport.take())
    assert response.headers[b"connection"] == b"keep-alive"  # a 1.0 client needs to be told
    assert not ended(transport)
    transport.protocol.data_received(b"GET /old HTTP/1.0\r\n\r\n")
    assert one(transport.take()).headers[b"connection"] == b"close"
    assert ended(transport)


@run_in_loop
async def test_head_response_has_no_body() -> None:
    _, transport = serve(lambda cycle: answer(cycle, b"0123456789"))
    transport.protocol.data_received(b"HEAD /a HTTP/1.1\r\nHost: example\r\n\r\n")
    head = transport.take()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 10\r\n" in head  # the GET's length, as RFC 9110 §9.3.2 allows
    assert head.endswith(b"\r\n\r\n")  # and nothing after the head
    assert not ended(transport)


@run_in_loop
async def test_streamed_response_is_chunked_on_http11_and_close_delimited_on_http10() -> None:
    def stream(cycle: RequestCycle) -> None:
        cycle.start_response(200, TEXT, None)
        cycle.write(b"hello ")
        cycle.write(b"world")
        cycle.end()
        cycle.complete()

    _, transport = serve(stream)
    transport.protocol.data_received(GET)
    data = transport.take()
    assert b"transfer-encoding: chunked\r\n" in data
    assert one(data).body == b"hello world"
    assert not ended(transport)

    _, transport = serve(stream)  # HTTP/1.0 asking for keep-alive cannot have it here
    transport.protocol.data_received(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    data = transport.take()
    assert b"transfer-encoding" not in data.lower()
    assert b"connection: close\r\n" in data
    assert data.endswith(b"\r\n\r\nhello world")
    assert ended(transport)  # the close is the end of the body


@run_in_loop
async def test_handler_failure_is_a_500_and_the_connection_closes() -> None:
    def broken(cycle: RequestCycle) -> None:
        raise ValueError("bug")

    _, transport = serve(broken)
    transport.protocol.data_received(GET)
    assert_error(one(transport.take()), 500, "internal_error")
    assert ended(transport)


@run_in_loop
async def test_expect_100_continue_is_sent_when_the_body_is_wanted() -> None:
    held = Held()
    _, transport = serve(held)
    transport.protocol.data_received(
        b"POST /up HTTP/1.1\r\nHost: example\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.take() == b""  # nothing until the handler decides to read the body
    cycle = held.cycles[0]
    cycle.send_continue()
    assert transport.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    transport.protocol.data_received(b"data")
    assert await cycle.body.read() == b"data"  # type: ignore[union-attr]
    answer(cycle)
    assert one(transport.take()).status == 200


# ---------------------------------------------------------------------- pipelining


@run_in_loop
async def test_pipelined_requests_are_handled_one_at_a_time_and_answered_in_order() -> None:
    held = Held()
    _, transport = serve(held)
    transport.protocol.data_received(get("/1") + get("/2") + get("/3"))
    assert [c.target for c in held.cycles] == [b"/1"]  # the next waits for this answer
    answer(held.cycles[0], b"one")
    assert [c.target for c in held.cycles] == [b"/1", b"/2"]
    answer(held.cycles[1], b"two")
    answer(held.cycles[2], b"three")
    assert [r.body for r in parse_responses(transport.take())] == [b"one", b"two", b"three"]
    assert not ended(transport)


@run_in_loop
async def test_a_long_pipeline_pauses_reading_until_it_drains() -> None:
    held = Held()
    _, transport = serve(held)
    transport.protocol.data_received(b"".join(get(f"/{i}") for i in range(MAX_PIPELINED + 1)))
    assert transport.reading_paused  # the client sends faster than requests are answered
    answered = 0
    while held.cycles and transport.reading_paused:
        answer(held.cycles.pop(0))
        answered += 1
    assert not transport.reading_paused
    assert answered < MAX_PIPELINED  # reading resumed before the backlog was all answered
    while held.cycles:
        answer(held.cycles.pop(0))
    assert len(parse_responses(transport.take())) == MAX_PIPELINED + 1


@run_in_loop
async def test_connection_close_on_a_pipelined_request_ends_the_connection_after_it() -> None:
    _, transport = serve(echo)
    close = b"GET /2 HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"
    transport.protocol.data_received(get("/1") + close + get("/3"))
    assert [r.body for r in parse_responses(transport.take())] == [b"GET /1", b"GET /2"]
    assert ended(transport)


@run_in_loop
async def test_a_malformed_request_behind_a_pipelined_one_ends_the_connection_after_its_answer() -> None:
    held = Held()
    _, transport = serve(held)
    transport.protocol.data_received(get("/1") + b"GARBAGE\r\n\r\n")
    assert transport.take() == b""  # the first request is still owed its answer
    answer(held.cycles[0])
    response = one(transport.take())
    assert (response.status, response.headers[b"connection"]) == (200, b"close")
    assert ended(transport)
    assert len(held.cycles) == 1


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


@run_in_loop
async def test_an_upgrade_request_is_answered_as_plain_http_then_the_connection_closes() -> None:
    held = Held()
    _, transport = serve(held)
    transport.protocol.data_received(UPGRADE)
    answer(held.cycles[0])  # proxied: the answer comes after the parse
    response = one(transport.take())
    assert (response.status, response.headers[b"connection"]) == (200, b"close")
    assert ended(transport)


@run_in_loop
async def test_an_upgrade_request_answered_at_once_also_closes_the_connection() -> None:
    _, transport = serve(echo)
    transport.protocol.data_received(UPGRADE + get("/next"))
    responses = parse_responses(transport.take())
    assert responses[0].status == 200
    # Either /next is answered too, or the connection ends so the client retries it;
    # today neither happens and the client waits for the idle timeout.
    assert len(responses) == 2 or ended(transport)


@run_in_loop
async def test_a_corked_response_leaves_in_one_write() -> None:
    held = Held()
    proto, transport = serve(held)
    proto.data_received(GET)
    assert proto.cork()
    answer(held.cycles[0], b"small body")
    assert transport.writes == 0
    proto.uncork()
    assert transport.writes == 1  # one syscall, one segment: head and body together
    assert one(transport.take()).body == b"small body"


# ---------------------------------------------------------------------- flow control


@run_in_loop
async def test_request_body_backpressure_pauses_and_resumes_reading() -> None:
    held = Held()
    _, transport = serve(held)
    size = 4 * HIGH_WATER
    head = f"POST /up HTTP/1.1\r\nHost: example\r\nContent-Length: {size}\r\n\r\n"
    transport.protocol.data_received(head.encode())
    transport.protocol.data_received(b"x" * (HIGH_WATER + 1))
    assert transport.reading_paused  # nobody reads the body yet: stop reading the socket
    body = held.cycles[0].body
    assert body is not None
    received = len(await body.read())
    assert not transport.reading_paused
    transport.protocol.data_received(b"x" * (size - received))
    while chunk := await body.read():
        received += len(chunk)
    assert received == size
    answer(held.cycles[0])
    assert one(transport.take()).status == 200


class Producer:
    """A response body's source (the upstream connection), as the listener sees it."""

    def __init__(self) -> None:
        self.progress = 0
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


@run_in_loop
async def test_a_slow_client_pauses_the_response_body_producer() -> None:
    held = Held()
    proto, _ = serve(held)
    proto.data_received(GET)
    cycle = held.cycles[0]
    producer = Producer()
    cycle.flow = producer
    cycle.start_response(200, TEXT, None)
    proto.pause_writing()  # the transport's buffer is over its high-water mark
    assert producer.paused
    proto.resume_writing()
    assert not producer.paused


# ---------------------------------------------------------------------- malformed requests, limits


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="not-http"),
        pytest.param(b"GET /a HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", id="bad-length"),
        pytest.param(b"POST /a HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", id="bad-expect"),
    ],
)
@run_in_loop
async def test_malformed_request_gets_400_json_and_the_connection_half_closes(request_bytes: bytes) -> None:
    handled = Held()
    _, transport = serve(handled)
    transport.protocol.data_received(request_bytes)
    assert_error(one(transport.take()), 400, "bad_request")
    assert not handled.cycles
    # Lingering close: FIN after the answer, then whatever the client still sends is dropped.
    assert transport.eof_written
    transport.protocol.data_received(GET)
    assert transport.take() == b""


@run_in_loop
async def test_oversized_headers_get_431() -> None:
    state = ServerState(limits(max_header_bytes=1024))
    _, transport = serve(echo, state)
    big = b"X-Big: " + b"v" * 2000 + b"\r\n"
    transport.protocol.data_received(b"GET /a HTTP/1.1\r\nHost: example\r\n" + big + b"\r\n")
    assert_error(one(transport.take()), 431, "headers_too_large")


@run_in_loop
async def test_a_head_that_never_ends_gets_431_but_one_sent_in_pieces_does_not() -> None:
    state = ServerState(limits(max_header_bytes=1024))
    _, transport = serve(echo, state)
    transport.protocol.data_received(b"GET /a HTTP/1.1\r\nHost: example\r\nX-Endless: ")
    for _ in range(30):
        if transport.written:
            break
        transport.protocol.data_received(b"v" * 100)
    assert_error(one(transport.take()), 431, "headers_too_large")

    # A valid 900-byte head arriving a few bytes per read is within the limit.
    _, transport = serve(echo, ServerState(limits(max_header_bytes=1024)))
    head = b"GET /a HTTP/1.1\r\nHost: example\r\nX-Fill: " + b"v" * 850 + b"\r\n\r\n"
    for i in range(0, len(head), 7):
        transport.protocol.data_received(head[i : i + 7])
    assert one(transport.take()).status == 200


@run_in_loop
async def test_body_over_the_limit_gets_413() -> None:
    held = Held()
    state = ServerState(limits(max_body_bytes=100))
    _, transport = serve(held, state)
    transport.protocol.data_received(b"POST /a HTTP/1.1\r\nHost: example\r\nContent-Length: 101\r\n\r\n")
    assert_error(one(transport.take()), 413, "payload_too_large")
    assert not held.cycles

    # Chunked, the limit is found while the body streams: the handler already has the
    # request, and is cancelled.
    _, transport = serve(held, ServerState(limits(max_body_bytes=100)))
    transport.protocol.data_received(
        b"POST /a HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    cycle = held.cycles[0]
    cancelled: list[bool] = []
    cycle.on_cancel = lambda: cancelled.append(True)
    transport.protocol.data_received(b"80\r\n" + b"x" * 0x80 + b"\r\n")
    assert_error(one(transport.take()), 413, "payload_too_large")
    assert cancelled == [True]
    assert cycle.finished


@run_in_loop
async def test_connections_over_the_limit_get_503() -> None:
    state = ServerState(limits(max_connections=1))
    _, first = serve(echo, state)
    _, second = serve(echo, state)
    assert_error(one(second.take()), 503, "overloaded")
    assert second.closed
    first.protocol.data_received(GET)
    assert one(first.take()).status == 200


# ---------------------------------------------------------------------- the client goes away


@run_in_loop
async def test_connection_lost_mid_request_cancels_the_handler_and_fails_its_body() -> None:
    held = Held()
    state = ServerState(limits())
    proto, transport = serve(held, state)
    proto.data_received(b"POST /up HTTP/1.1\r\nHost: example\r\nContent-Length: 10\r\n\r\nabc")
    cycle = held.cycles[0]
    cancelled: list[bool] = []
    cycle.on_cancel = lambda: cancelled.append(True)
    assert state.in_flight == 1
    transport.peer_closes(ConnectionResetError())
    assert cancelled == [True]  # the upstream request is abandoned
    assert state.in_flight == 0
    assert proto not in state.connections
    body = cycle.body
    assert body is not None
    assert await body.read() == b"abc"
    with pytest.raises(ClientDisconnected):
        await body.read()
    # An answer that comes late goes nowhere (the transport would raise if written to).
    cycle.send_response(200, TEXT, b"late")
    cycle.complete()


@run_in_loop
async def test_half_close_after_a_request_still_gets_the_answer() -> None:
    held = Held()
    proto, transport = serve(held)
    proto.data_received(GET)
    assert proto.eof_received()  # keep the write side open
    answer(held.cycles[0])
    response = one(transport.take())
    assert response.status == 200
    assert response.headers[b"connection"] == b"close"
    assert ended(transport)


# ---------------------------------------------------------------------- timeouts


@run_in_loop
async def test_idle_connection_is_closed_after_idle_timeout() -> None:
    _, transport = serve(echo, ServerState(limits(idle_timeout=0.05)))
    transport.protocol.data_received(GET)
    transport.take()
    await asyncio.sleep(0.02)
    assert not transport.closed
    await asyncio.sleep(0.1)
    assert transport.closed
    assert transport.take() == b""  # closed quietly: there was no request to answer


@run_in_loop
async def test_a_request_that_does_not_arrive_in_time_gets_408() -> None:
    _, transport = serve(echo, ServerState(limits(request_timeout=0.05)))
    transport.protocol.data_received(b"GET /a HTTP/1.1\r\nHost: exa")
    await asyncio.sleep(0.15)
    assert_error(one(transport.take()), 408, "request_timeout")


@run_in_loop
async def test_a_handler_that_does_not_answer_in_time_gets_504_and_is_cancelled() -> None:
    held = Held()
    _, transport = serve(held, ServerState(limits(request_timeout=0.05)))
    transport.protocol.data_received(GET)
    cancelled: list[bool] = []
    held.cycles[0].on_cancel = lambda: cancelled.append(True)
    held.cycles[0].request_id = "req-1"  # the gateway's correlation id
    await asyncio.sleep(0.15)
    response = one(transport.take())
    assert_error(response, 504, "upstream_timeout")
    assert response.headers[b"x-request-id"] == b"req-1"
    assert response.json()["correlation_id"] == "req-1"
    assert cancelled == [True]
    assert held.cycles[0].timed_out


# ---------------------------------------------------------------------- drain (shutdown)


@run_in_loop
async def test_drain_closes_idle_connections_and_ends_busy_ones_after_their_answer() -> None:
    held = Held()
    state = ServerState(limits())
    _, idle = serve(held, state)
    busy_proto, busy = serve(held, state)
    busy_proto.data_received(get("/1") + get("/2"))
    state.drain()
    assert idle.closed
    assert not ended(busy)
    answer(held.cycles[0])
    answer(held.cycles[1])  # requests already received are still answered
    first, last = parse_responses(busy.take())
    assert b"connection" not in first.headers
    assert last.headers[b"connection"] == b"close"
    assert ended(busy)
    await settle()
    assert not state.connections
    # New connections are refused while draining.
    _, late = serve(held, state)
    assert_error(one(late.take()), 503, "draining")


@run_in_loop
async def test_drain_ends_a_connection_whose_response_was_already_streaming() -> None:
    held = Held()
    state = ServerState(limits())
    proto, transport = serve(held, state)
    proto.data_received(GET)
    cycle = held.cycles[0]
    cycle.start_response(200, TEXT, None)  # the head went out saying nothing of closing
    state.drain()
    cycle.write(b"rest")
    cycle.end()
    cycle.complete()
    assert one(transport.take()).body == b"rest"
    assert ended(transport)
