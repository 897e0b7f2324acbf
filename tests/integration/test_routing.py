"""Routing through a real gateway: exact, {param}, /* prefixes, specificity, 404/405, rewrites.

Each route rewrites to `/api/echo/<route id>/...` on the demo upstream, so the echoed path
says which route served a request and what the upstream was asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from harness import Gateway, GatewayFactory, UpstreamProcess, raw_request

UUID_SHAPE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

ROUTES = [
    {"id": "users-list", "methods": ["GET"], "path": "/api/users", "upstream_id": "demo",
     "rewrite": "/api/echo/users-list"},
    {"id": "users-create", "methods": ["POST"], "path": "/api/users", "upstream_id": "demo",
     "rewrite": "/api/echo/users-create"},
    {"id": "user-get", "methods": ["GET"], "path": "/api/users/{id}", "upstream_id": "demo",
     "rewrite": "/api/echo/user-get/{id}"},
    {"id": "user-me", "methods": ["GET"], "path": "/api/users/me", "upstream_id": "demo",
     "rewrite": "/api/echo/user-me"},
    {"id": "user-order", "methods": ["GET"], "path": "/api/users/{id}/orders/{order}", "upstream_id": "demo",
     "rewrite": "/api/echo/user-order/{order}/of/{id}"},
    {"id": "api-all", "path": "/api/*", "upstream_id": "demo", "rewrite": "/api/echo/api-all/{*}"},
    {"id": "api-v2", "path": "/api/v2/*", "upstream_id": "demo", "rewrite": "/api/echo/api-v2/{*}"},
    {"id": "echo", "path": "/api/echo/*", "upstream_id": "demo"},
    {"id": "svc", "path": "/svc/*", "upstream_id": "demo-base", "strip_prefix": True},
    {"id": "svc-exact", "path": "/exact-strip", "upstream_id": "demo-base", "strip_prefix": True},
    {"id": "admin", "methods": ["GET"], "path": "/admin/*", "upstream_id": "demo",
     "rewrite": "/api/echo/admin/{*}"},
    {"id": "status", "methods": ["GET"], "path": "/status", "upstream_id": "demo",
     "rewrite": "/api/echo/status"},
]  # fmt: skip


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    return module_gateway({"demo": demo.url, "demo-base": f"{demo.url}/api/echo/base"}, ROUTES)


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        yield c


def upstream_path(client: httpx.Client, method: str, path: str) -> str:
    r = client.request(method, path)
    assert r.status_code == 200, (method, path, r.status_code, r.text)
    path_seen: str = r.json()["path"]
    return path_seen


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/users", "/api/echo/users-list"),  # exact
        ("POST", "/api/users", "/api/echo/users-create"),  # same path, other method, other route
        ("GET", "/api/users/42", "/api/echo/user-get/42"),  # {param}
        ("GET", "/api/users/me", "/api/echo/user-me"),  # a literal beats a {param}
        ("GET", "/api/users/7/orders/99", "/api/echo/user-order/99/of/7"),  # two params
        ("DELETE", "/api/users", "/api/echo/api-all/users"),  # exact routes refuse DELETE: /api/* takes it
        ("GET", "/api/other/thing", "/api/echo/api-all/other/thing"),  # /* prefix
        ("GET", "/api", "/api/echo/api-all/"),  # /api/* matches /api itself
        ("GET", "/api/v2/items", "/api/echo/api-v2/items"),  # longer prefix beats shorter
        ("GET", "/api/v2", "/api/echo/api-v2/"),
        ("PATCH", "/api/echo/x/y", "/api/echo/x/y"),  # passthrough: the path as the client sent it
        ("GET", "/status", "/api/echo/status"),
    ],
)
def test_route_selection(client: httpx.Client, method: str, path: str, expected: str) -> None:
    assert upstream_path(client, method, path) == expected


def test_strip_prefix_with_upstream_base_path(client: httpx.Client) -> None:
    # /svc/* strips "/svc"; the upstream's base_url path (/api/echo/base) is prepended.
    assert upstream_path(client, "GET", "/svc/a/b") == "/api/echo/base/a/b"
    assert upstream_path(client, "GET", "/svc") == "/api/echo/base/"
    assert upstream_path(client, "GET", "/exact-strip") == "/api/echo/base/"


def test_query_string_is_preserved(client: httpx.Client) -> None:
    for path in ("/api/echo/q", "/api/users/5", "/svc/q"):
        r = client.get(path + "?a=1&b=x%20y&a=2&empty=")
        assert r.status_code == 200
        assert r.json()["query"] == "a=1&b=x%20y&a=2&empty=", path


def test_no_route_is_json_404_with_correlation_id(client: httpx.Client) -> None:
    for path in ("/", "/nothing", "/apix", "/admins/x"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] == "not_found"
        assert body["message"]
        assert UUID_SHAPE.match(body["correlation_id"])
        assert r.headers["x-request-id"] == body["correlation_id"]


def test_client_request_id_is_the_404_correlation_id(client: httpx.Client) -> None:
    r = client.get("/nowhere", headers={"X-Request-ID": "trace-404-abc"})
    assert r.status_code == 404
    assert r.json()["correlation_id"] == "trace-404-abc"
    assert r.headers["x-request-id"] == "trace-404-abc"


def test_wrong_method_is_405_with_allow(client: httpx.Client) -> None:
    r = client.post("/status", content=b"x")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    body = r.json()
    assert body["error"] == "method_not_allowed"
    assert body["correlation_id"] == r.headers["x-request-id"]

    r = client.delete("/admin/users/1")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"


def test_get_route_serves_head(client: httpx.Client) -> None:
    get = client.get("/status")
    head = client.head("/status")
    assert head.status_code == 200
    assert head.content == b""
    # The upstream's Content-Length for the HEAD is passed on (the echo names the method,
    # so HEAD's body would be one byte longer than GET's).
    assert int(head.headers["content-length"]) == len(get.content) + 1
    # The connection is still usable after a HEAD (no phantom body expected).
    assert client.get("/status").json()["method"] == "GET"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/api/../admin/panel", "/api/echo/admin/panel"),
        ("/api/users/../../admin/panel", "/api/echo/admin/panel"),
        ("/api/%2e%2e/admin/panel", "/api/echo/admin/panel"),  # encoded dots are dots
        ("/api/./users", "/api/echo/users-list"),
        ("//api//users", "/api/echo/users-list"),  # merged slashes
        ("/api/%75sers", "/api/echo/users-list"),  # %75 = 'u', an unreserved character
        ("/../../status", "/api/echo/status"),  # cannot climb above the root
    ],
)
def test_paths_are_normalised_before_routing(gw: Gateway, target: str, expected: str) -> None:
    # Raw socket: httpx would normalise the dot segments itself before sending.
    r = raw_request(gw.port, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert r.status == 200
    assert r.json()["path"] == expected


def test_normalised_path_gets_the_admin_routes_method_rules(gw: Gateway) -> None:
    # /api/* takes every method, /admin/* only GET: after normalisation the admin rules apply.
    r = raw_request(gw.port, b"DELETE /api/../admin/panel HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD"


def test_absolute_form_target_is_routed_by_its_path(gw: Gateway) -> None:
    r = raw_request(
        gw.port, b"GET http://example.test/api/users/3?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert r.status == 200
    assert r.json()["path"] == "/api/echo/user-get/3"
    assert r.json()["query"] == "x=1"
