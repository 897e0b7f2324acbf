"""Fuzzing the running gateway from both sides (hypothesis).

- Requests: random and mutated request bytes go to the listener on a fresh connection,
  which is then half-closed; whatever comes back must parse as complete HTTP/1.1
  responses (never a 500, never a hang), and at the end the gateway must be alive, must
  not have logged an unhandled exception, and its memory must not have grown without bound.
- Responses: a fuzzed upstream answers each request with random and mutated response
  bytes; the client must get a well-formed answer (the upstream's, or 502/504), never a
  500 and never a hang.

`make test` runs a few thousand cases in total (about a minute on the 2-core VM). More:
`APIGATE_FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/integration/test_fuzz.py` (the count
is per test; docs/SECURITY.md, "How each was tested").
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httptools
import pytest
from harness import HOST, Gateway, GatewayFactory, UpstreamProcess, vm_hwm_kib
from hypothesis import given
from hypothesis import strategies as st

ANSWER_TIMEOUT_S = 15.0  # far above any answer; only a hang gets near it


# ----------------------------------------------------------------------------- parsing
class _Responses:
    """Collects complete responses from bytes with httptools' response parser."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.in_message = False
        self.head_done = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.in_message = True
        self.head_done = False

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_message_complete(self) -> None:
        self.in_message = False
        self.statuses.append(self.parser.get_status_code())


def parse_responses(data: bytes, cut_body_ok: bool = False) -> list[int]:
    """The statuses of the complete responses in `data`; AssertionError if it is not a
    sequence of well-formed HTTP/1.1 responses. `cut_body_ok`: the last one may end in
    the middle of its body (how the gateway reports an upstream that broke mid-body,
    docs/HTTP.md), never in the middle of its head."""
    r = _Responses()
    try:
        r.parser.feed_data(data)
    except httptools.HttpParserError as e:
        raise AssertionError(f"malformed response bytes ({e}): {data[:300]!r}") from None
    if r.in_message and cut_body_ok and r.head_done:
        return [*r.statuses, r.parser.get_status_code()]
    assert not r.in_message, f"truncated response: {data[:300]!r}"
    return r.statuses


def exchange(port: int, payload: bytes) -> bytes:
    """Send `payload` on a new connection, half-close, read until the gateway closes."""
    with socket.create_connection((HOST, port), timeout=ANSWER_TIMEOUT_S) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the gateway may answer and close before it read everything
        out = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break  # an answer is followed by a close; unread bytes make it a reset
            except TimeoutError:
                raise AssertionError(f"no end within {ANSWER_TIMEOUT_S} s for {payload[:200]!r}") from None
            if not chunk:
                break
            out += chunk
        return bytes(out)


def gateway_log_is_clean(gw: Gateway) -> None:
    logs = gw.stdout() + gw.stderr()
    for sign in ("Traceback", "request handler failed", "internal_error", "filter_failed"):
        assert sign not in logs, logs[-3000:]


# ----------------------------------------------------------------------------- requests
PRINTABLE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "GE T", "get", "PRI", ""]
)
TARGETS = st.one_of(
    st.sampled_from(
        [
            "/api/echo/x",
            "/api/echo/a/../b",
            "/api/echo/%2e%2e/x",
            "/api/echo/..%2F..%2Fadmin",
            "/api/echo/a%00b",
            "/api/echo/%zz",
            "http://h/api/echo/x",
            "http://u@h/api/echo/x",
            "*",
            "h:80",
            "/api/echo/x?q=%ff&a=b",
            "/" + "a/" * 300,
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60).map(
        lambda t: "/" + t
    ),
)
VERSIONS = st.sampled_from(
    ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/11", "http/1.1", ""]
)
NAMES = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Expect",
            "X-Request-ID",
            "X-Forwarded-For",
            "X_User_ID",
            "Authorization",
            "TE",
            "Upgrade",
            "Cookie",
        ]
    ),
    st.text(alphabet=PRINTABLE, min_size=1, max_size=20),
)
VALUES = st.one_of(
    st.sampled_from(
        [
            "t",
            "0",
            "5",
            "-1",
            "99999999999999999999",
            "chunked",
            "identity, chunked",
            "gzip",
            "close",
            "keep-alive, Host, X-User-ID",
            "100-continue",
            "evil.example/x?y",
            "[::1]:80",
            "Bearer x.y.z",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40),
)
BODIES = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"FFFFFFFFFFFFFFFF\r\nab", b"3\r\nab", b"0\r\n\r\n"]),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    head = f"{draw(METHODS)} {draw(TARGETS)} {draw(VERSIONS)}".encode("latin-1")
    lines = [head]
    for name, value in draw(st.lists(st.tuples(NAMES, VALUES), max_size=8)):
        lines.append(f"{name}: {value}".encode("latin-1"))
    sep = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    return sep.join(lines) + sep + sep + draw(BODIES)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[i:]
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 40))]
    return bytes(data)


VALID = st.sampled_from(
    [
        b"GET /api/echo/x HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /api/echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /api/echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /api/echo/a HTTP/1.1\r\nHost: t\r\n\r\nGET /api/echo/b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"PUT /api/echo/x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        b"GET /api/echo/x HTTP/1.0\r\n\r\n",
    ]
)
REQUESTS = st.one_of(requests(), mutated(VALID), mutated(requests()))


@pytest.fixture(scope="module")
def fuzz_gw(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Iterator[Gateway]:
    gw = module_gateway(
        {"demo": {"base_url": demo.url, "timeout_secs": 5}},
        [{"id": "echo", "path": "/api/echo/*", "upstream_id": "demo"}],
        server={"request_timeout_secs": 10, "max_header_bytes": 8192, "max_body_bytes": 1 << 20},
    )
    yield gw


def test_fuzzed_requests_get_well_formed_answers_and_the_gateway_stays_up(fuzz_gw: Gateway) -> None:
    seen: dict[int, int] = {}

    @given(REQUESTS)
    def one(payload: bytes) -> None:
        data = exchange(fuzz_gw.port, payload)
        statuses = parse_responses(data)
        for status in statuses:
            seen[status] = seen.get(status, 0) + 1
            assert 100 <= status <= 599
        assert b'"error":"internal_error"' not in data, (payload, data)

    one()
    first_hwm = vm_hwm_kib(fuzz_gw.pid)
    one()  # a second round: memory must not keep growing with traffic
    assert fuzz_gw.alive()
    gateway_log_is_clean(fuzz_gw)
    assert vm_hwm_kib(fuzz_gw.pid) < first_hwm + 64 * 1024, (first_hwm, vm_hwm_kib(fuzz_gw.pid))
    assert {200, 400} <= set(seen), seen  # the fuzzer reached both sides of the parser


# ----------------------------------------------------------------------------- responses
class FuzzedUpstream:
    """A raw TCP upstream: reads a request head, writes `self.answer`, closes."""

    def __init__(self) -> None:
        self.answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                head = b""
                try:
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        head += chunk
                    conn.sendall(self.answer)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass  # until the gateway closes: no reset that could eat the answer
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopping = True
        self.sock.close()


STATUS_LINES = st.one_of(
    st.sampled_from(
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 101 Switching Protocols",
            "HTTP/1.1 100 Continue",
            "HTTP/1.0 200 OK",
            "HTTP/1.1 999 What",
            "HTTP/1.1 20 Short",
            "HTTP/2 200",
            "ICY 200 OK",
            "HTTP/1.1 200",
        ]
    ),
    st.integers(0, 1000).map(lambda c: f"HTTP/1.1 {c} X"),
)
RESPONSE_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "Content-Length",
                "Transfer-Encoding",
                "Connection",
                "Content-Type",
                "Set-Cookie",
                "Keep-Alive",
                "X-A",
            ]
        ),
        st.sampled_from(
            ["0", "2", "10", "-1", "chunked", "gzip, chunked", "close", "text/plain", "a=b", "x"]
        ),
    ),
    max_size=6,
)
RESPONSE_BODIES = st.one_of(
    st.binary(max_size=100),
    st.sampled_from([b"ok", b"2\r\nok\r\n0\r\n\r\n", b"FFFFFFFFFFFFFFFFF\r\n", b"2\r\nok"]),
)


@st.composite
def upstream_responses(draw: st.DrawFn) -> bytes:
    lines = [draw(STATUS_LINES).encode()]
    lines += [f"{n}: {v}".encode() for n, v in draw(RESPONSE_HEADERS)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(RESPONSE_BODIES)


@pytest.fixture(scope="module")
def fuzzed_upstream() -> Iterator[FuzzedUpstream]:
    up = FuzzedUpstream()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def proxy_gw(module_gateway: GatewayFactory, fuzzed_upstream: FuzzedUpstream) -> Gateway:
    return module_gateway(
        {"fuzz": {"base_url": f"http://{HOST}:{fuzzed_upstream.port}", "timeout_secs": 3}},
        server={"request_timeout_secs": 10},
    )


def test_fuzzed_upstream_responses_reach_the_client_well_formed(
    proxy_gw: Gateway, fuzzed_upstream: FuzzedUpstream
) -> None:
    seen: dict[int, int] = {}

    @given(st.one_of(upstream_responses(), mutated(upstream_responses())))
    def one(answer: bytes) -> None:
        fuzzed_upstream.answer = answer
        data = exchange(proxy_gw.port, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        statuses = parse_responses(data, cut_body_ok=True)
        assert len(statuses) <= 2, data  # an interim 1xx at most, then the answer
        for status in statuses:
            seen[status] = seen.get(status, 0) + 1
        # The upstream may answer 500 itself; the gateway's own 500 is a bug.
        assert b'"error":"internal_error"' not in data, (answer, data)

    one()
    assert proxy_gw.alive()
    gateway_log_is_clean(proxy_gw)
    assert 502 in seen and 200 in seen, seen
