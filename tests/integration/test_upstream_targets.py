"""Upstreams with several targets, through the running gateway (issue 16).

Two demo upstreams (each in its own process, so that one can be killed) serve the same
upstream id. The demo's echo endpoint returns the Host the gateway sent, which is the
target's `host:port`: that is how a test tells which target answered.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import PYTHON, Conn, GatewayFactory, UpRequest, UpstreamProcess, free_port, wait_until

from apigate.gateway.balancer import target_name
from apigate.telemetry import names


def demo_at(port: int, workdir: Path) -> UpstreamProcess:
    return UpstreamProcess([str(PYTHON), "-m", "apigate.demo.upstream", "--port", str(port)], port, workdir)


@pytest.fixture
def two_demos(tmp_path: Path) -> Any:
    ups = [demo_at(free_port(), tmp_path), demo_at(free_port(), tmp_path)]
    yield ups
    for up in ups:
        up.stop()


def served_by(client: httpx.Client, url: str) -> str:
    r = client.get(url)
    assert r.status_code == 200, r.text
    return str(r.json()["headers"]["host"])


def metric(metrics_port: int, name: str, **labels: str) -> float | None:
    """A sample's value; `target` is given as the target's url (the label is its name)."""
    if "target" in labels:
        labels["target"] = target_name(labels["target"])
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def observability(metrics_port: int) -> dict[str, Any]:
    return {"metrics_enabled": True, "metrics_port": metrics_port}


@pytest.mark.parametrize(
    ("policy", "low", "high"),
    [("round_robin", 0.75, 0.75), ("least_requests", 0.75, 0.75), ("random_two_choices", 0.6, 0.9)],
)
def test_two_targets_share_traffic_by_weight(
    gateway: GatewayFactory, two_demos: list[UpstreamProcess], policy: str, low: float, high: float
) -> None:
    a, b = two_demos
    gw = gateway(
        {
            "svc": {
                "targets": [{"url": a.url, "weight": 3}, {"url": b.url, "weight": 1}],
                "load_balancing": policy,
            }
        }
    )
    counts: collections.Counter[str] = collections.Counter()
    with httpx.Client() as client:
        for _ in range(400):
            counts[served_by(client, f"{gw.url}/api/echo/x")] += 1
    share = counts[f"127.0.0.1:{a.port}"] / 400
    assert low <= share <= high, counts
    assert sum(counts.values()) == 400


def test_every_target_down_answers_503_at_once(gateway: GatewayFactory) -> None:
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    gw = gateway(
        {
            "svc": {
                "targets": [{"url": u} for u in dead],
                "circuit_breaker": {"failure_threshold": 1, "open_secs": 60},
            }
        }
    )
    with httpx.Client() as client:
        first = [client.get(f"{gw.url}/x") for _ in range(2)]  # each target refuses once
        assert [r.status_code for r in first] == [502, 502]
        started = time.monotonic()
        rs = [client.get(f"{gw.url}/x") for _ in range(20)]
        took = time.monotonic() - started
    assert {r.status_code for r in rs} == {503}
    assert rs[0].json()["error"] == "upstream_unavailable"
    assert took < 5, f"20 refusals took {took:.2f}s"


def test_a_killed_target_costs_no_idempotent_request_and_comes_back(
    gateway: GatewayFactory, two_demos: list[UpstreamProcess], tmp_path: Path
) -> None:
    a, b = two_demos
    metrics_port = free_port()
    gw = gateway(
        {
            "svc": {
                "targets": [{"url": a.url}, {"url": b.url}],
                "connect_timeout_secs": 1,
                "circuit_breaker": {"failure_threshold": 2, "open_secs": 0.5, "half_open_requests": 1},
                "health_check": {
                    "path": "/api/users",
                    "interval_secs": 0.2,
                    "timeout_secs": 1,
                    "healthy_threshold": 2,
                    "unhealthy_threshold": 1,
                },
                "retries": {"attempts": 3, "budget_percent": 100},
            }
        },
        observability=observability(metrics_port),
    )
    stop = threading.Event()
    statuses: collections.Counter[int] = collections.Counter()
    hosts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.get(f"{gw.url}/api/echo/load")
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 200:
                        hosts[r.json()["headers"]["host"]] += 1

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        assert wait_until(lambda: sum(statuses.values()) > 100, 20)
        b.proc.kill()  # no goodbye: pooled connections are reset, connects refused
        b.proc.wait(10)
        killed_at = sum(statuses.values())
        assert wait_until(lambda: sum(statuses.values()) > killed_at + 300, 30)
        stop.set()
        for f in futures:
            f.result()
    assert statuses == {200: sum(statuses.values())}, statuses
    b_host = f"127.0.0.1:{b.port}"
    # Out of rotation: health checks (and the breaker, if it saw failures first) say so.
    assert metric(metrics_port, names.UPSTREAM_TARGET_HEALTHY, service="svc", target=b.url) == 0
    assert metric(metrics_port, names.UPSTREAM_TARGET_HEALTHY, service="svc", target=a.url) == 1
    assert metric(metrics_port, names.UPSTREAM_REQUESTS_IN_FLIGHT, service="svc", target=a.url) == 0

    # Back on the same port: traffic returns once healthy_threshold checks passed.
    back = demo_at(b.port, tmp_path)
    try:
        with httpx.Client() as client:

            def b_serves() -> bool:
                return any(served_by(client, f"{gw.url}/api/echo/back") == b_host for _ in range(4))

            assert wait_until(b_serves, 20, interval=0.1)
        assert metric(metrics_port, names.UPSTREAM_TARGET_HEALTHY, service="svc", target=b.url) == 1
        assert metric(metrics_port, names.UPSTREAM_CIRCUIT_STATE, service="svc", target=b.url) == 0
        ready = httpx.get(f"http://127.0.0.1:{metrics_port}/health/ready").json()
        assert {t["target"] for t in ready["upstreams"]["svc"]} == {target_name(a.url), target_name(b.url)}
    finally:
        back.stop()
    assert '"event_type":"target_unhealthy"' in gw.stdout()
    assert '"event_type":"circuit_open"' in gw.stdout()  # the breaker opened too


def test_breaker_opens_on_failures_and_retries_are_counted(gateway: GatewayFactory, tmp_path: Path) -> None:
    """No health check: the breaker alone takes a dead target out, and the retries that
    hid its failures from the client are counted by reason."""
    live = demo_at(free_port(), tmp_path)
    try:
        dead = f"http://127.0.0.1:{free_port()}"
        metrics_port = free_port()
        gw = gateway(
            {
                "svc": {
                    "targets": [{"url": live.url}, {"url": dead}],
                    "circuit_breaker": {"failure_threshold": 3, "open_secs": 60},
                    "retries": {"attempts": 2, "budget_percent": 100},
                }
            },
            observability=observability(metrics_port),
            logging={"level": "INFO", "sinks": [{"type": "stdout"}]},
        )
        with httpx.Client() as client:
            rs = [client.post(f"{gw.url}/api/echo/p", content=b"x") for _ in range(20)]
        assert {r.status_code for r in rs} == {200}  # non-idempotent: connect failures are retried
        assert metric(metrics_port, names.UPSTREAM_CIRCUIT_STATE, service="svc", target=dead) == 1
        assert (
            metric(metrics_port, names.UPSTREAM_RETRIES_TOTAL, service="svc", reason="connect_failure") == 3
        )
        assert (
            metric(
                metrics_port,
                names.UPSTREAM_POOL_CONNECTIONS,
                service="svc",
                target=live.url,
                state="idle",
            )
            == 1
        )
        assert '"event_type":"circuit_open"' in gw.stdout()
    finally:
        live.stop()


def test_a_503_is_retried_on_another_target_for_idempotent_requests_only(
    gateway: GatewayFactory, scripted: Any
) -> None:
    async def unavailable(req: UpRequest, conn: Conn) -> bool:
        await conn.respond(503, b"busy")
        return True

    async def fine(req: UpRequest, conn: Conn) -> bool:
        await conn.respond(200, b"fine")
        return True

    busy, ok = scripted(unavailable), scripted(fine)
    metrics_port = free_port()
    gw = gateway(
        {
            "svc": {
                "targets": [{"url": busy.url}, {"url": ok.url}],
                "retries": {"attempts": 2, "on": ["status_503"], "budget_percent": 100},
                "circuit_breaker": {"failure_threshold": 1000, "open_secs": 1, "count_5xx": True},
            }
        },
        observability=observability(metrics_port),
    )
    with httpx.Client() as client:
        gets = [client.get(f"{gw.url}/g") for _ in range(10)]
        posts = [client.post(f"{gw.url}/p", content=b"x") for _ in range(10)]
    assert [(r.status_code, r.text) for r in gets] == [(200, "fine")] * 10
    # Not idempotent: the 503 is the answer (round robin sends half of them to `busy`).
    assert sorted(r.status_code for r in posts) == [200] * 5 + [503] * 5
    assert {r.text for r in posts if r.status_code == 503} == {"busy"}
    retried = metric(metrics_port, names.UPSTREAM_RETRIES_TOTAL, service="svc", reason="status_503")
    assert retried == 5
