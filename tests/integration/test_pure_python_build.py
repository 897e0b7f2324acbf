"""The data plane from source (`APIGATE_PURE=1`), as where no C compiler built it.

The rest of the suite runs the compiled build (`make test` compiles it); this walks one
request of each kind through the interpreted modules so that the fallback keeps working.
"""

from __future__ import annotations

import hashlib
import subprocess

import httpx
import pytest
from harness import APIGATE, GatewayFactory, RawConn, UpstreamProcess, free_port


@pytest.fixture(autouse=True)
def pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIGATE_PURE", "1")  # inherited by the gateway subprocess


def test_version_says_pure_python() -> None:
    out = subprocess.run([str(APIGATE), "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("(pure Python)")


def test_requests_through_the_interpreted_data_plane(gateway: GatewayFactory, demo: UpstreamProcess) -> None:
    routes = [
        {"id": "user", "methods": ["GET"], "path": "/api/users/{id}", "upstream_id": "demo",
         "rewrite": "/api/echo/user/{id}"},
        {"id": "echo", "path": "/api/echo/*", "upstream_id": "demo"},
        {"id": "down", "path": "/down", "upstream_id": "nobody"},
    ]  # fmt: skip
    gw = gateway({"demo": demo.url, "nobody": f"http://127.0.0.1:{free_port()}"}, routes)
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        r = client.get("/api/users/42?x=1", headers={"X-Request-ID": "pure-1"})
        assert r.status_code == 200
        assert r.json()["path"] == "/api/echo/user/42"
        assert r.headers["x-request-id"] == "pure-1"

        body = b"z" * 300_000
        r = client.post("/api/echo/upload", content=body)
        assert r.status_code == 200
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

        r = client.get("/nowhere")
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"
        assert client.post("/api/users/1").status_code == 405
        assert client.get("/down").status_code == 502

    with RawConn(gw.port) as c:  # keep-alive and pipelining
        c.send(b"GET /api/echo/a HTTP/1.1\r\nHost: t\r\n\r\nGET /api/echo/b HTTP/1.1\r\nHost: t\r\n\r\n")
        assert [c.read_response().json()["path"] for _ in range(2)] == ["/api/echo/a", "/api/echo/b"]
    assert gw.stop() == 0
