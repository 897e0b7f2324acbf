"""Per-route header transforms, and the X-User-ID a client can never forge.

The demo upstream echoes the request it received, so each test reads exactly what reached
the upstream; the response's own headers are what reached the client.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from harness import Gateway, GatewayFactory, UpstreamProcess


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    routes = [
        {
            "id": "shaped",
            "path": "/api/echo/shaped/*",
            "upstream_id": "demo",
            "request_headers": {
                "set": {"X-Tenant": "${TRANSFORM_TENANT:-acme}", "X-Client": "$client_ip via $route_id"},
                "add": {"X-Trace-Tag": "rid=$request_id user=[$user] cost=$$5"},
                "remove": ["X-Debug", "Authorization"],
            },
            "response_headers": {
                "set": {"Server": "apigate", "Cache-Control": "no-store"},
                "add": {"X-Served-By": "$route_id"},
                "remove": ["Date"],
            },
        },
        {"id": "plain", "path": "/api/echo/plain/*", "upstream_id": "demo"},
    ]
    return module_gateway({"demo": demo.url}, routes)


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        yield c


def test_request_headers_are_set_added_and_removed_with_variables(client: httpx.Client) -> None:
    r = client.get(
        "/api/echo/shaped/x",
        headers={
            "X-Tenant": "forged",
            "X-Debug": "1",
            "Authorization": "Bearer s3cret",
            "X-Request-ID": "req-7",
        },
    )
    assert r.status_code == 200
    seen = r.json()["headers"]
    assert seen["x-tenant"] == "acme"  # set replaces the client's copy; ${VAR:-default} expanded at load
    assert seen["x-client"] == "127.0.0.1 via shaped"
    assert seen["x-trace-tag"] == "rid=req-7 user=[] cost=$5"
    assert "x-debug" not in seen and "authorization" not in seen


def test_response_headers_replace_and_remove_the_upstream_fields(client: httpx.Client) -> None:
    r = client.get("/api/echo/shaped/x")
    assert r.headers.get_list("server") == ["apigate"]  # the demo upstream's own Server is gone
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-served-by"] == "shaped"
    assert "date" not in r.headers
    assert r.headers["x-request-id"]  # the gateway's own additions are kept


def test_a_route_without_transforms_forwards_headers_unchanged(client: httpx.Client) -> None:
    r = client.get("/api/echo/plain/x", headers={"X-Debug": "1", "X-Tenant": "mine"})
    seen = r.json()["headers"]
    assert seen["x-debug"] == "1" and seen["x-tenant"] == "mine"
    assert "x-served-by" not in r.headers and r.headers["server"] != "apigate"


@pytest.mark.parametrize("path", ["/api/echo/plain/x", "/api/echo/shaped/x"])
def test_a_client_cannot_send_x_user_id_without_auth_configured(client: httpx.Client, path: str) -> None:
    # No auth: section at all: the upstream must still never see a client's X-User-ID.
    r = client.get(path, headers={"X-User-ID": "admin", "x-user-id": "root"})
    assert r.status_code == 200
    assert not [h for h in r.json()["raw_headers"] if h.lower().startswith("x-user-id")]
