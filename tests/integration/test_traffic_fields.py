"""CORS and header transforms on one route: the fields a route adds, constant and per request.

A route's constant fields are serialized once and spliced into the heads as one piece; on a
route with plugins (which may read or edit what the gateway adds) they are (name, value)
pairs, as before. Both ways must give the same answer, so every test runs on both kinds of
route. The upstream here sends its own `Vary` and `Access-Control-Allow-Origin`, and echoes
the request fields it received, each as its own (name, value) pair.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from harness import REPO, Conn, Gateway, GatewayFactory, ScriptedUpstream, UpRequest

ORIGIN = "http://app.example.test"
TRANSFORMS = {
    "request_headers": {
        "set": {"X-Tenant": "acme"},  # constant, replacing the client's copy
        "add": {"X-Client": "$client_ip", "X-Trace": "rid=$request_id route=$route_id"},  # per request
        "remove": ["X-Debug"],
    },
    "response_headers": {"add": {"X-Served-By": "$route_id", "X-Rid": "$request_id"}},
}


@pytest.fixture
def echo_upstream(scripted: Any) -> ScriptedUpstream:
    async def handler(req: UpRequest, conn: Conn) -> bool:
        own = [("Vary", "Accept-Encoding"), ("Access-Control-Allow-Origin", "*")]
        await conn.respond_json({"headers": req.headers}, headers=own)
        return True

    up: ScriptedUpstream = scripted(handler)
    return up


@pytest.fixture(params=["serialized", "pairs"])
def gw(request: pytest.FixtureRequest, gateway: GatewayFactory, echo_upstream: ScriptedUpstream) -> Gateway:
    cors = {"allow_origins": [ORIGIN], "expose_headers": ["X-Rid"]}
    routes = [
        {"id": "both", "path": "/both/*", "upstream_id": "up", "cors": cors, **TRANSFORMS},
        # A response transform that removes Vary removes CORS's too, as it always did.
        {
            "id": "no-vary",
            "path": "/no-vary/*",
            "upstream_id": "up",
            "cors": cors,
            "response_headers": {"remove": ["Vary"]},
        },
        {
            "id": "secure",
            "path": "/secure/*",
            "upstream_id": "up",
            "auth_required": True,
            "cors": cors,
            **TRANSFORMS,
        },
    ]
    sections: dict[str, Any] = {"auth": {"jwt_secret": "a-test-secret-that-is-at-least-32-bytes-long"}}
    if request.param == "pairs":
        sections["plugins"] = [{"name": "noop", "module": "noop_plugin:Noop", "path": str(REPO / "bench")}]
    return gateway({"up": echo_upstream.url}, routes, **sections)


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        yield c


def received(r: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in json.loads(r.content)["headers"]:
        out.setdefault(name, []).append(value)
    return out


def test_constant_and_per_request_fields_on_a_keep_alive_connection(client: httpx.Client) -> None:
    for rid in ("req-1", "req-2", "req-2"):  # per-request values change, and repeat
        r = client.get(
            "/both/x", headers={"Origin": ORIGIN, "X-Request-ID": rid, "X-Tenant": "forged", "X-Debug": "1"}
        )
        assert r.status_code == 200
        seen = received(r)
        assert seen["x-tenant"] == ["acme"]  # set: the client's copy is gone
        assert "x-debug" not in seen  # remove
        assert seen["x-client"] == ["127.0.0.1"]
        assert seen["x-trace"] == [f"rid={rid} route=both"]
        assert r.headers.get_list("x-served-by") == ["both"]
        assert r.headers.get_list("x-rid") == [rid]
        assert r.headers.get_list("x-request-id") == [rid]
        # CORS: the origin echoed once (the upstream's own '*' dropped), Vary merged with the
        # upstream's: two fields, which a cache reads as one list.
        assert r.headers.get_list("access-control-allow-origin") == [ORIGIN]
        assert r.headers.get_list("access-control-expose-headers") == ["X-Rid"]
        assert sorted(r.headers.get_list("vary")) == ["Accept-Encoding", "Origin"]


def test_a_disallowed_origin_gets_only_vary(client: httpx.Client) -> None:
    r = client.get("/both/x", headers={"Origin": "https://evil.test"})
    assert sorted(r.headers.get_list("vary")) == ["Accept-Encoding", "Origin"]
    assert not [n for n in r.headers if n.startswith("access-control-")]
    assert r.headers["x-served-by"] == "both"


def test_a_response_transform_that_removes_vary_removes_corss_too(client: httpx.Client) -> None:
    r = client.get("/no-vary/x", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert "vary" not in r.headers
    assert r.headers.get_list("access-control-allow-origin") == [ORIGIN]


def test_the_gateways_own_answer_carries_them_too(client: httpx.Client) -> None:
    r = client.get("/secure/x", headers={"Origin": ORIGIN, "X-Request-ID": "req-401"})
    assert r.status_code == 401
    assert r.headers.get_list("access-control-allow-origin") == [ORIGIN]
    assert r.headers.get_list("vary") == ["Origin"]
    assert r.headers.get_list("x-served-by") == ["secure"]
    assert r.headers.get_list("x-rid") == ["req-401"]
