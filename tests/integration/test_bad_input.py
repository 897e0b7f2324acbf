"""Bad input from clients (malformed requests → 400 JSON) and from operators (a bad
config → `apigate serve` exits 2 naming file:line, without a traceback)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import APIGATE, Gateway, GatewayFactory, RawConn, UpstreamProcess, free_port


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    return module_gateway({"demo": demo.url})


@pytest.mark.parametrize(
    "payload",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET /api/users HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET /api/users HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        # Both framings at once: the request-smuggling shape (RFC 9112 §6.3).
        b"POST /api/echo/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /api/echo/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"GET api/users HTTP/1.1\r\nHost: t\r\n\r\n",  # not an origin-form target
        b"GET /api/echo/%00 HTTP/1.1\r\nHost: t\r\n\r\n",  # NUL in the path
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",  # not a forward proxy
    ],
    ids=["garbage", "header-no-colon", "bad-length", "cl-and-te", "bad-chunk", "relative", "nul", "connect"],
)
def test_malformed_request_gets_400_json_and_close(gw: Gateway, payload: bytes) -> None:
    with RawConn(gw.port) as c:
        c.send(payload)
        r = c.read_response()
        assert r.status == 400, (r.status, r.body)
        assert r.header("content-type") == "application/json"
        assert r.json()["error"] == "bad_request"
        assert "Traceback" not in r.body.decode()
        assert c.closed_by_peer(2)


def test_malformed_request_after_a_good_one_on_the_same_connection(gw: Gateway) -> None:
    with RawConn(gw.port) as c:
        c.send(b"GET /api/users/1 HTTP/1.1\r\nHost: t\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        r = c.read_response()
        assert r.status == 200  # the good one is answered in full
        assert r.json()["id"] == 1
        # then the connection ends (with or without a 400 for the garbage)
        try:
            after = c.read_response()
        except Exception:
            after = None
        assert after is None or after.status == 400
        assert c.closed_by_peer(2)


def test_gateway_keeps_serving_after_bad_input(gw: Gateway) -> None:
    for _ in range(3):
        with RawConn(gw.port) as c:
            c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage TLS hello\r\n\r\n")
            c.closed_by_peer(2)
    with RawConn(gw.port) as c:
        c.request("GET", "/api/users/2")
        assert c.read_response().json()["id"] == 2


# ----------------------------------------------------------------------------- bad config
def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(APIGATE), "serve", "--config", str(config)], capture_output=True, text=True, timeout=30
    )


def test_bad_config_exits_2_with_file_line_and_no_traceback(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "server:\n"
        "  bind_address: 127.0.0.1\n"
        f"  port: {free_port()}\n"
        "  max_connectionz: 10\n"  # line 4: a typo
        "upstreams:\n"
        "  - id: users\n"
        "    base_url: http://127.0.0.1:1\n"
        "routes:\n"
        "  - id: r1\n"
        "    path: /api/*\n"
        "    upstream_id: user-svc\n"  # line 11: no such upstream
    )
    out = serve(config)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{config.name}:4" in out.stderr or f"{config}:4" in out.stderr, out.stderr
    assert "max_connectionz" in out.stderr
    assert f"{config.name}:11" in out.stderr or f"{config}:11" in out.stderr, out.stderr
    assert "user-svc" in out.stderr


def test_yaml_syntax_error_exits_2_with_file_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("server:\n  port: 8080\n  bind_address: [unclosed\n")
    out = serve(config)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "broken.yaml:" in out.stderr, out.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    out = serve(tmp_path / "does-not-exist.yaml")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "does-not-exist.yaml" in out.stderr
