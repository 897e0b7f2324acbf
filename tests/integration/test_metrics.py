"""/metrics of a real apigate after real traffic: names, labels, values, and the sum over workers.

Also home of the small Prometheus text-format reader the other telemetry integration
tests use (`scrape`, `Sample`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from auth_fixtures import SECRET
from harness import HOST, Conn, Gateway, GatewayFactory, ScriptedUpstream, UpRequest, free_port, wait_until

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.append(Sample(m.group(1), labels, float(m.group(3))))
    return out


def scrape_text(port: int) -> str:
    r = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text


def scrape(port: int) -> list[Sample]:
    return parse(scrape_text(port))


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def names(samples: list[Sample]) -> set[str]:
    return {s.name for s in samples}


async def status_handler(req: UpRequest, conn: Conn) -> bool:
    """/status/<code> answers that code; anything else 200."""
    parts = req.path.split("/")
    code = 200
    if "status" in parts[:-1] and parts[parts.index("status") + 1].isdigit():
        code = int(parts[parts.index("status") + 1])
    await conn.respond(code, b"ok")
    return True


def traffic_gateway(gateway: GatewayFactory, upstream: ScriptedUpstream, **extra: Any) -> tuple[Gateway, int]:
    """A gateway with routes that answer 200, upstream 5xx, 502 (dead upstream) and 401 (auth)."""
    mport = free_port()
    dead = f"http://{HOST}:{free_port()}"  # nobody listens: connect refused
    routes = [
        {"id": "public", "path": "/public/*", "upstream_id": "app"},
        {"id": "secure", "path": "/secure/*", "upstream_id": "app", "auth_required": True},
        {"id": "broken", "path": "/broken/*", "upstream_id": "gone"},
    ]
    sections: dict[str, Any] = {
        "observability": {"metrics_enabled": True, "metrics_port": mport},
        "auth": {"jwt_secret": SECRET},
    }
    sections.update(extra)
    gw = gateway({"app": upstream.url, "gone": dead}, routes, **sections)
    assert wait_until(lambda: _accepts(mport), 10)
    return gw, mport


def _accepts(port: int) -> bool:
    try:
        return httpx.get(f"http://{HOST}:{port}/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def send_traffic(base: str) -> dict[str, int]:
    """200s, upstream 503s, 502s, 401s and unmatched 404s; returns what was sent."""
    sent = {"ok": 5, "upstream_503": 2, "dead": 3, "noauth": 4, "unmatched": 2}
    with httpx.Client(base_url=base, timeout=10) as c:
        for _ in range(sent["ok"]):
            assert c.get("/public/x").status_code == 200
        for _ in range(sent["upstream_503"]):
            assert c.get("/public/status/503").status_code == 503
        for _ in range(sent["dead"]):
            assert c.get("/broken/x").status_code == 502
        for _ in range(sent["noauth"]):
            assert c.get("/secure/x").status_code == 401
        for i in range(sent["unmatched"]):
            assert c.get(f"/no/such/path/{i}").status_code == 404
    return sent


@pytest.fixture
def app_upstream(scripted: Any) -> ScriptedUpstream:
    up: ScriptedUpstream = scripted(status_handler)
    return up


def test_scrape_after_traffic(gateway: GatewayFactory, app_upstream: ScriptedUpstream) -> None:
    gw, mport = traffic_gateway(gateway, app_upstream)
    send_traffic(gw.url)
    s = scrape(mport)
    assert value(s, "http_requests_total", route="public", status="200", method="GET") == 5
    assert value(s, "http_requests_total", route="public", status="503") == 2
    assert value(s, "http_requests_total", route="broken", status="502") == 3
    assert value(s, "http_requests_total", route="secure", status="401") == 4
    # Whatever path a client sends, an unmatched request is one label value.
    assert value(s, "http_requests_total", route="unmatched", status="404") == 2
    assert {x.labels["route"] for x in s if x.name == "http_requests_total"} == {
        "public",
        "secure",
        "broken",
        "unmatched",
    }
    assert value(s, "upstream_failures_total", service="gone", reason="connect") == 3
    assert value(s, "upstream_failures_total", service="app", reason="5xx") == 2
    assert value(s, "auth_failures_total", reason="missing") == 4
    # Histograms: the +Inf bucket and _count equal the requests; 0.5 s is a bucket bound.
    assert value(s, "http_request_duration_seconds_count", route="public") == 7
    assert value(s, "http_request_duration_seconds_bucket", route="public", le="+Inf") == 7
    assert value(s, "http_request_duration_seconds_bucket", route="public", le="0.5") == 7
    les = {x.labels["le"] for x in s if x.name == "http_request_duration_seconds_bucket"}
    assert {"0.001", "0.5", "10.0", "+Inf"} <= les
    # The 401s never reached the upstream; the 502s never got response headers.
    assert value(s, "upstream_request_duration_seconds_count", service="app") == 7
    assert value(s, "upstream_request_duration_seconds_count", service="gone") == 0
    assert value(s, "apigate_build_info") == 1
    assert {"active_connections", "in_flight_requests"} <= names(s)
    # The first scrape: the 5xx share since start (2 upstream 503s + 3 502s of 16 requests).
    assert value(s, "http_error_rate", window="1m") == pytest.approx(5 / 16)


def test_gauges_see_open_connections(gateway: GatewayFactory, app_upstream: ScriptedUpstream) -> None:
    gw, mport = traffic_gateway(gateway, app_upstream)
    with httpx.Client(base_url=gw.url, timeout=10) as a, httpx.Client(base_url=gw.url, timeout=10) as b:
        a.get("/public/x")
        b.get("/public/x")
        assert value(scrape(mport), "active_connections") == 2
    assert wait_until(lambda: value(scrape(mport), "active_connections") == 0, 10)


def test_metrics_disabled_means_no_listener_and_no_filter(
    gateway: GatewayFactory, app_upstream: ScriptedUpstream
) -> None:
    mport = free_port()
    gw = gateway({"app": app_upstream.url}, observability={"metrics_enabled": False, "metrics_port": mport})
    assert httpx.get(gw.url + "/x", timeout=10).status_code == 200
    assert not _accepts(mport)
    # Health still answers on the main port.
    assert httpx.get(gw.url + "/health/live", timeout=10).status_code == 200


def test_one_scrape_sums_every_worker(gateway: GatewayFactory, app_upstream: ScriptedUpstream) -> None:
    """server.workers: 2 — each scrape (whichever worker answers) counts every worker's requests."""
    gw, mport = traffic_gateway(gateway, app_upstream, server={"workers": 2})
    total = 60
    for _ in range(total):  # a new connection each: SO_REUSEPORT spreads them over both workers
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            assert c.get("/public/x").status_code == 200

    def counted() -> float:
        return value(scrape(mport), "http_requests_total", route="public", status="200")

    # Snapshots are at most a second old; then every scrape, on either worker, sees them all.
    assert wait_until(lambda: counted() == total, 10, interval=0.2)
    for _ in range(6):  # new connections: scrapes land on both workers
        assert counted() == total
        s = scrape(mport)
        assert value(s, "http_request_duration_seconds_count", route="public") == total
        assert value(s, "upstream_request_duration_seconds_count", service="app") == total
        assert value(s, "apigate_build_info") == 1  # max over workers, not a sum


def test_rate_limit_and_log_sink_metrics(gateway: GatewayFactory, app_upstream: ScriptedUpstream) -> None:
    mport = free_port()
    gw = gateway(
        {"app": app_upstream.url},
        [
            {
                "id": "limited",
                "path": "/*",
                "upstream_id": "app",
                "rate_limit": {"limit": 2, "window_secs": 60, "algorithm": "fixed_window", "key_type": "ip"},
            }
        ],
        observability={"metrics_port": mport},
        rate_limiting={},
    )
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert [c.get("/x").status_code for _ in range(4)] == [200, 200, 429, 429]
    s = scrape(mport)
    assert value(s, "rate_limited_requests_total", route="limited", key_type="ip") == 2
    assert value(s, "http_requests_total", route="limited", status="429") == 2
    # The harness logs to stdout at WARN: the sink exists and is counted (the 429s are logged).
    assert "log_events_total" in names(s)
    assert {x.labels["sink"] for x in s if x.name == "log_events_total"} >= {"stdout"}
