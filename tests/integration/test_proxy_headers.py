"""Header handling through the gateway: hop-by-hop fields both ways (RFC 9110 §7.6.1),
X-Forwarded-*, and X-Request-ID (kept when sane, generated otherwise, echoed both ways)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from harness import Conn, Gateway, GatewayFactory, RawConn, ScriptedUpstream, UpRequest, UpstreamProcess

UUID_SHAPE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HOP_BY_HOP = {"connection", "keep-alive", "te", "transfer-encoding", "upgrade", "proxy-connection", "trailer"}


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    return module_gateway({"demo": demo.url})


def echo(gw: Gateway, head_lines: list[str], body: bytes = b"", method: str = "GET") -> tuple[Any, Any]:
    """Send a raw request to /api/echo/h; return (the response, what the upstream saw)."""
    with RawConn(gw.port) as c:
        head = "\r\n".join([f"{method} /api/echo/h HTTP/1.1", *head_lines]) + "\r\n\r\n"
        c.send(head.encode("latin-1") + body)
        r = c.read_response()
    assert r.status == 200, r.body
    seen = r.json()
    names = {h.split(":", 1)[0].strip().lower() for h in seen["raw_headers"]}
    return r, (seen, names)


def test_request_hop_by_hop_headers_are_removed(gw: Gateway) -> None:
    _, (seen, names) = echo(
        gw,
        [
            "Host: api.example.test",
            "Connection: keep-alive, X-Hop-Secret, x-other-hop",
            "X-Hop-Secret: do-not-forward",
            "X-Other-Hop: nor-this",
            "Keep-Alive: timeout=5, max=100",
            "TE: trailers",
            "Upgrade: h2c",
            "Proxy-Connection: keep-alive",
            "X-End-To-End: kept",
        ],
    )
    forbidden = HOP_BY_HOP | {"x-hop-secret", "x-other-hop"}
    assert not names & forbidden, names & forbidden
    assert seen["headers"]["x-end-to-end"] == "kept"


def test_headers_named_by_connection_are_removed_whatever_their_order(gw: Gateway) -> None:
    # The named field comes before Connection here; the previous test has it after.
    _, (_, names) = echo(gw, ["Host: t", "X-Before: 1", "Connection: X-Before", "X-After: 2"])
    assert "x-before" not in names
    assert "x-after" in names
    assert "connection" not in names


def test_upgrade_request_is_proxied_as_plain_http_and_the_connection_ends(gw: Gateway) -> None:
    # Protocols other than WebSocket (tunnelled: test_traffic_websocket.py) are not switched
    # to: Upgrade and Connection are dropped, the request is answered as an ordinary one,
    # and the connection closes after it.
    with RawConn(gw.port) as c:
        c.send(b"GET /api/echo/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        names = {h.split(":", 1)[0].lower() for h in r.json()["raw_headers"]}
        assert not names & {"upgrade", "connection"}
        assert r.header("connection") == "close"
        assert c.closed_by_peer(2)


def test_request_transfer_encoding_is_reframed(gw: Gateway) -> None:
    # A chunked client body reaches the upstream complete, framed by the gateway itself.
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    _, (seen, _) = echo(gw, ["Host: t", "Transfer-Encoding: chunked"], body, method="POST")
    assert seen["body_length"] == 11
    assert [h for h in seen["raw_headers"] if h.lower().startswith("transfer-encoding")] == [
        "transfer-encoding: chunked"
    ]


def test_x_forwarded_headers(gw: Gateway) -> None:
    _, (seen, _) = echo(gw, ["Host: shop.example.test:8443"])
    h = seen["headers"]
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "shop.example.test:8443"
    assert h["host"] == gw.config["upstreams"][0]["base_url"].split("//")[1]  # the upstream's own host


def test_x_forwarded_for_is_appended_to(gw: Gateway) -> None:
    _, (seen, _) = echo(gw, ["Host: t", "X-Forwarded-For: 203.0.113.7, 10.0.0.1"])
    assert seen["headers"]["x-forwarded-for"] == "203.0.113.7, 10.0.0.1, 127.0.0.1"
    # Two client header lines are one list (RFC 9110 §5.3), kept in order.
    _, (seen, _) = echo(gw, ["Host: t", "X-Forwarded-For: 203.0.113.7", "X-Forwarded-For: 10.0.0.1"])
    xff = [h for h in seen["raw_headers"] if h.lower().startswith("x-forwarded-for")]
    assert xff == ["x-forwarded-for: 203.0.113.7, 10.0.0.1, 127.0.0.1"]


def test_client_cannot_forge_forwarded_proto_and_host(gw: Gateway) -> None:
    _, (seen, _) = echo(gw, ["Host: real.test", "X-Forwarded-Proto: https", "X-Forwarded-Host: forged.test"])
    assert seen["headers"]["x-forwarded-proto"] == "http"
    assert seen["headers"]["x-forwarded-host"] == "real.test"


def test_sane_request_id_is_kept_sent_upstream_and_returned(gw: Gateway) -> None:
    rid = "req-" + "a" * 100 + "-~!#$%&'*+.^_`|"
    r, (seen, _) = echo(gw, ["Host: t", f"X-Request-ID: {rid}"])
    assert r.header("x-request-id") == rid
    assert seen["headers"]["x-request-id"] == rid
    max_len = "x" * 128
    r, (seen, _) = echo(gw, ["Host: t", f"X-Request-ID: {max_len}"])
    assert r.header("x-request-id") == max_len == seen["headers"]["x-request-id"]


@pytest.mark.parametrize(
    "bad",
    [
        "x" * 129,  # too long
        "has space",
        "caf\u00e9",  # non-ASCII (sent as latin-1 byte 0xE9)
        "tab\there",
        "",
    ],
)
def test_insane_request_id_is_replaced(gw: Gateway, bad: str) -> None:
    r, (seen, _) = echo(gw, ["Host: t", f"X-Request-ID: {bad}"])
    rid = r.header("x-request-id")
    assert rid is not None
    assert UUID_SHAPE.match(rid), rid
    assert seen["headers"]["x-request-id"] == rid
    sent = [h for h in seen["raw_headers"] if h.lower().startswith("x-request-id")]
    assert sent == [f"x-request-id: {rid}"]


def test_generated_request_ids_differ_per_request(gw: Gateway) -> None:
    ids = set()
    with RawConn(gw.port) as c:
        for _ in range(20):
            c.request("GET", "/api/echo/id")
            r = c.read_response()
            rid = r.header("x-request-id")
            assert rid is not None and UUID_SHAPE.match(rid)
            assert r.json()["headers"]["x-request-id"] == rid
            ids.add(rid)
    assert len(ids) == 20


# ----------------------------------------------------------------------------- response direction
RESPONSE_HOP_HEADERS = [
    ("X-Up-Before", "named-before"),
    ("Connection", "X-Up-Before, X-Up-After"),
    ("X-Up-After", "named-after"),
    ("Keep-Alive", "timeout=5, max=1000"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Upgrade", "h2c"),
    ("X-End-To-End", "kept"),
]


@pytest.fixture
def hop_upstream(scripted: Any) -> ScriptedUpstream:
    async def handler(req: UpRequest, conn: Conn) -> bool:
        chunked = req.path == "/chunked"
        await conn.respond(200, b"payload", RESPONSE_HOP_HEADERS, chunked=chunked)
        return True

    up: ScriptedUpstream = scripted(handler)
    return up


@pytest.mark.parametrize("path", ["/length", "/chunked"])
def test_response_hop_by_hop_headers_are_removed(
    gateway: GatewayFactory, hop_upstream: ScriptedUpstream, path: str
) -> None:
    gw = gateway({"up": hop_upstream.url})
    with RawConn(gw.port) as c:
        for _ in range(2):  # and the connection stays usable
            c.request("GET", path)
            r = c.read_response()
            assert r.status == 200
            assert r.body == b"payload"
            names = r.names()
            leaked = names & {"x-up-before", "x-up-after", "keep-alive", "proxy-connection", "te", "trailer"}
            assert not leaked, leaked
            assert "upgrade" not in names
            assert r.header("x-end-to-end") == "kept"
            assert r.all("connection") == []
            if path == "/chunked":
                # The gateway's own framing, once.
                assert r.all("transfer-encoding") == ["chunked"]
            else:
                assert r.all("transfer-encoding") == []
                assert r.header("content-length") == "7"


SPELLED_HEADERS = [
    ("X-Mixed-Case", "as-sent"),
    ("Content-Type", "text/plain"),
    ("KEEP-ALIVE", "timeout=5"),
    ("CONNECTION", "X-Named-Upper"),
    ("x-named-upper", "gone"),
]


def test_response_fields_keep_the_upstreams_spelling_and_hop_by_hop_goes_in_any_case(
    gateway: GatewayFactory, scripted: Any
) -> None:
    async def handler(req: UpRequest, conn: Conn) -> bool:
        await conn.respond(200, b"spelled", SPELLED_HEADERS)
        return True

    gw = gateway({"up": scripted(handler).url})
    with RawConn(gw.port) as c:
        c.send(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        raw = b""
        while not raw.endswith(b"spelled"):
            chunk = c.sock.recv(65536)
            assert chunk, raw
            raw += chunk
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    # Forwarded as the upstream spelled them (field names are case-insensitive, RFC 9110
    # §5.1; nginx forwards them the same way) ...
    assert b"X-Mixed-Case: as-sent" in head and b"Content-Type: text/plain" in head
    # ... while hop-by-hop fields go whatever their case, with the field CONNECTION named.
    names = {line.split(b":", 1)[0].lower() for line in head[1:]}
    assert not names & {b"keep-alive", b"connection", b"x-named-upper"}, head
    lengths = [line for line in head[1:] if line.lower().startswith(b"content-length:")]
    assert lengths == [b"content-length: 7"]  # the gateway's own framing, once
