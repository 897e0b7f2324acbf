"""IP rules through a real gateway: deny wins, allow lists, trusted proxies, and metrics.

Every client here is 127.0.0.1; addresses from elsewhere arrive the only way a gateway
believes them, through X-Forwarded-For written by a trusted proxy (server.trusted_proxies).
"""

from __future__ import annotations

import re

import httpx
import pytest
from harness import HOST, Gateway, GatewayFactory, UpstreamProcess, free_port


def route(rid: str, **rules: object) -> dict[str, object]:
    return {"id": rid, "path": f"/api/echo/{rid}/*", "upstream_id": "demo", **rules}


@pytest.fixture(scope="module")
def gw(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    routes = [
        route("open"),
        route("deny-me", ip_deny=["127.0.0.1"]),
        route("ten-only", ip_allow=["10.0.0.0/8"]),
        route("deny-wins", ip_allow=["127.0.0.0/8"], ip_deny=["127.0.0.1/32"]),
        route("v6-and-v4", ip_allow=["::1", "2001:db8::/32", "127.0.0.1"]),
    ]
    return module_gateway(
        {"demo": demo.url},
        routes,
        ip_deny=["192.0.2.0/24"],  # top level: every route
        observability={"metrics_enabled": True, "metrics_port": free_port()},
    )


@pytest.fixture(scope="module")
def behind_proxy(module_gateway: GatewayFactory, demo: UpstreamProcess) -> Gateway:
    routes = [route("office", ip_allow=["203.0.113.0/24"]), route("public")]
    return module_gateway(
        {"demo": demo.url},
        routes,
        server={"trusted_proxies": ["127.0.0.1"]},
        ip_deny=["198.51.100.0/24"],
    )


def get(gw: Gateway, rid: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/api/echo/{rid}/x", headers=headers, timeout=10)


def test_a_denied_address_gets_403_json_and_never_reaches_the_upstream(gw: Gateway) -> None:
    r = get(gw, "deny-me")
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "forbidden" and body["correlation_id"] == r.headers["x-request-id"]
    assert "raw_headers" not in body  # the demo upstream's echo never happened
    assert get(gw, "open").status_code == 200


def test_an_address_outside_the_allow_list_is_refused(gw: Gateway) -> None:
    assert get(gw, "ten-only").status_code == 403
    # X-Forwarded-For is not believed without trusted_proxies: a client cannot claim 10.x.
    assert get(gw, "ten-only", **{"X-Forwarded-For": "10.1.2.3"}).status_code == 403


def test_deny_wins_over_allow_and_v6_entries_sit_beside_v4(gw: Gateway) -> None:
    assert get(gw, "deny-wins").status_code == 403
    assert get(gw, "v6-and-v4").status_code == 200


def test_refusals_are_counted_by_route_and_reason(gw: Gateway) -> None:
    get(gw, "deny-me")
    get(gw, "ten-only")
    mport = gw.config["observability"]["metrics_port"]
    text = httpx.get(f"http://{HOST}:{mport}/metrics", timeout=10).text

    def value(pattern: str) -> float:
        m = re.search(r"^" + pattern + r" (\S+)$", text, re.M)
        assert m, pattern
        return float(m.group(1))

    assert value(r'access_denied_total\{route="deny-me",reason="ip_denied"\}') >= 2
    assert value(r'access_denied_total\{route="ten-only",reason="ip_not_allowed"\}') >= 1
    assert value(r'http_requests_total\{method="GET",route="deny-me",status="403"\}') >= 2


def test_behind_a_trusted_proxy_the_forwarded_client_address_is_judged(behind_proxy: Gateway) -> None:
    assert get(behind_proxy, "office", **{"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    assert get(behind_proxy, "office", **{"X-Forwarded-For": "8.8.8.8"}).status_code == 403
    # The proxy appends the address it saw: entries to its left are the client's own words.
    assert get(behind_proxy, "office", **{"X-Forwarded-For": "203.0.113.7, 8.8.8.8"}).status_code == 403
    # The top-level deny applies to every route.
    assert get(behind_proxy, "public", **{"X-Forwarded-For": "198.51.100.4"}).status_code == 403
    assert get(behind_proxy, "public", **{"X-Forwarded-For": "8.8.8.8"}).status_code == 200
