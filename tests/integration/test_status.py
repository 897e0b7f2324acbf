"""/status and /status.json of a real apigate: numbers summed over two workers, basic
auth in front of the page (and only of the page), never on the proxy port."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import bcrypt
import httpx
from harness import HOST, Gateway, GatewayFactory, ScriptedUpstream, free_port, wait_until
from jsonschema import Draft202012Validator
from test_metrics import _accepts, app_upstream, scrape, traffic_gateway, value

__all__ = ["app_upstream"]  # the fixture, imported for this module's tests

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text())


def status(port: int, auth: tuple[str, str] | None = None) -> dict[str, Any]:
    r = httpx.get(f"http://{HOST}:{port}/status.json", timeout=10, auth=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    doc: dict[str, Any] = r.json()
    errors = list(Draft202012Validator(SCHEMA).iter_errors(doc))
    assert not errors, errors[0].message
    return doc


def admin_gateway(
    gateway: GatewayFactory, upstream: ScriptedUpstream, admin: dict[str, Any]
) -> tuple[Gateway, int]:
    """A gateway with one route and `observability.admin` set to `admin`."""
    mport = free_port()
    gw = gateway(
        {"app": upstream.url},
        [{"id": "public", "path": "/public/*", "upstream_id": "app"}],
        observability={"metrics_enabled": True, "metrics_port": mport, "admin": admin},
    )
    assert wait_until(lambda: _accepts(mport), 10, 0.05)
    return gw, mport


def route(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in doc["routes"] if r["route"] == name)


def test_two_workers_one_picture(gateway: GatewayFactory, app_upstream: ScriptedUpstream) -> None:
    gw, mport = traffic_gateway(gateway, app_upstream, server={"workers": 2})
    total = 40
    for _ in range(total):  # a new connection each: SO_REUSEPORT spreads them over both workers
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            assert c.get("/public/x").status_code == 200
            assert c.get("/broken/x").status_code == 502
    # Snapshots are at most a second old; wait until a scrape counts everything.
    assert wait_until(
        lambda: value(scrape(mport), "http_requests_total", route="public", status="200") == total, 10, 0.2
    )
    first_views = 0
    for _ in range(8):  # new connections: views land on both workers
        doc = status(mport)
        assert doc["workers"] == {"configured": 2, "alive": 2}
        public, broken = route(doc, "public"), route(doc, "broken")
        if doc["since_start"]:  # this worker's first view: everything since the start
            first_views += 1
            assert public["requests"] == total and public["status_classes"]["2xx"] == total
            assert broken["requests"] == total and broken["error_rate"] == 1.0
            assert public["p99"] is not None
            gone = next(u for u in doc["upstreams"] if u["service"] == "gone")
            assert gone["failures"] == {"connect": total}
            assert doc["diagnosis"]["status"] in ("SEV2", "SEV3")  # half the requests fail
        else:  # later views: the window since this worker's first view, in which nothing happened
            assert public["requests"] == 0
    assert first_views >= 1
    html = httpx.get(f"http://{HOST}:{mport}/status", timeout=10)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in html.headers
    for row in ("public", "secure", "broken"):
        assert f'<tr data-key="{row}">' in html.text


def test_the_window_moves_with_the_traffic(gateway: GatewayFactory, app_upstream: ScriptedUpstream) -> None:
    gw, mport = traffic_gateway(gateway, app_upstream)
    with httpx.Client(base_url=f"http://{HOST}:{mport}", timeout=10) as admin:
        admin.get("/status.json")  # the first view starts the ring
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            for _ in range(12):
                assert c.get("/public/status/503").status_code == 503

        def seen() -> bool:
            doc = admin.get("/status.json").json()
            return bool(route(doc, "public")["status_classes"]["5xx"] == 12 and not doc["since_start"])

        assert wait_until(seen, 10, 0.6)
        doc = admin.get("/status.json").json()
        assert route(doc, "public")["error_rate"] == 1.0
        assert route(doc, "public")["history"]  # sparkline points between kept scrapes


def test_basic_auth_guards_the_page_only(gateway: GatewayFactory, app_upstream: ScriptedUpstream) -> None:
    hashed = bcrypt.hashpw(b"on-call pw", bcrypt.gensalt(rounds=4)).decode()
    _, mport = admin_gateway(
        gateway, app_upstream, {"basic_auth": {"username": "ops", "password_hash": hashed}}
    )
    base = f"http://{HOST}:{mport}"
    for path in ("/status", "/status.json"):
        r = httpx.get(base + path, timeout=10)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic realm=")
        assert r.json()["error"] == "unauthenticated"
        assert httpx.get(base + path, timeout=10, auth=("ops", "wrong")).status_code == 401
        assert httpx.get(base + path, timeout=10, auth=("ops", "on-call pw")).status_code == 200
    assert status(mport, ("ops", "on-call pw"))["admin"]["basic_auth"] is True
    assert hashed not in httpx.get(base + "/status", timeout=10, auth=("ops", "on-call pw")).text
    # Prometheus and the probes are not asked for a password.
    assert httpx.get(base + "/metrics", timeout=10).status_code == 200
    assert httpx.get(base + "/health/live", timeout=10).status_code == 200
    r = httpx.post(base + "/status.json", timeout=10, auth=("ops", "on-call pw"))
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_not_on_the_proxy_port_and_can_be_off(
    gateway: GatewayFactory, app_upstream: ScriptedUpstream
) -> None:
    gw, mport = traffic_gateway(gateway, app_upstream)
    r = httpx.get(gw.url + "/status.json", timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    doc = status(mport)
    assert doc["admin"] == {"address": f"{HOST}:{mport}", "loopback_only": True, "basic_auth": False}
    _, mport2 = admin_gateway(gateway, app_upstream, {"status_enabled": False})
    assert httpx.get(f"http://{HOST}:{mport2}/status", timeout=10).status_code == 404
    assert httpx.get(f"http://{HOST}:{mport2}/metrics", timeout=10).status_code == 200
