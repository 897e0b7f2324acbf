"""`apigate diagnose` against a running apigate: healthy, a failing upstream, a dead Redis.

Traffic runs in a thread while diagnose takes its two scrapes; the scrapes of the failing
case are also saved and read back with --from-file (the recorded-scrape path).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from auth_fixtures import RedisServer
from harness import HOST, GatewayFactory, free_port, wait_until
from ops_fixtures import ops_cli as apigate_cli
from test_metrics import scrape_text, status_handler


@contextmanager
def traffic(url: str) -> Iterator[None]:
    """Requests in a loop until the block ends (a few hundred per second at most)."""
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    c.get(url)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(10)


def wait_ready(mport: int, status: str) -> None:
    """Until /health/ready says `status` ("ready", "not_ready"): the checks have run."""

    def answers() -> bool:
        try:
            return bool(
                httpx.get(f"http://{HOST}:{mport}/health/ready", timeout=5).json()["status"] == status
            )
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    assert wait_until(answers, 30, 0.05), f"/health/ready never said {status}"


def diagnose(*args: str) -> tuple[int, dict[str, Any]]:
    out = apigate_cli("diagnose", "--format", "json", *args)
    assert out.stderr == "", out.stderr
    return out.returncode, json.loads(out.stdout)


def observability(mport: int, **checks: bool) -> dict[str, Any]:
    return {"metrics_enabled": True, "metrics_port": mport, "health_checks": checks}


def test_healthy_gateway_exits_0(gateway: GatewayFactory, scripted: Any) -> None:
    up = scripted(status_handler)
    mport = free_port()
    gw = gateway({"app": up.url}, observability=observability(mport, check_upstreams=True))
    wait_ready(mport, "ready")
    with traffic(gw.url + "/ok"):
        code, report = diagnose(
            "--url", gw.url, "--metrics", f"http://{HOST}:{mport}/metrics", "--interval", "1s"
        )
    # A loaded test machine may push a loopback p99 past 0.5 s; nothing else may show up.
    others = [f for f in report["findings"] if not f["title"].startswith("p99 latency")]
    assert others == [] and code == (0 if not report["findings"] else 1), report
    assert report["ready"]["status"] == "ready" and report["requests"] > 0


def test_failing_upstream_is_sev1_with_evidence_cause_and_runbook(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    dead = f"http://{HOST}:{free_port()}"  # connection refused
    mport = free_port()
    gw = gateway({"users": dead}, observability=observability(mport, check_upstreams=True))
    metrics = f"http://{HOST}:{mport}/metrics"
    wait_ready(mport, "not_ready")
    with traffic(gw.url + "/api/users"):
        code, report = diagnose("--url", gw.url, "--metrics", metrics, "--interval", "1s")
        before = scrape_text(mport)
        text = apigate_cli("diagnose", "--url", gw.url, "--metrics", metrics, "--interval", "1s")
        after = scrape_text(mport)
    assert (code, report["status"]) == (2, "SEV1"), report
    first = report["findings"][0]
    assert first["severity"] == "SEV1", report
    assert first["title"].startswith("Error rate 100.0% (5xx: 502)"), report
    assert first["evidence"][0]["metric"] == 'http_requests_total{status=~"5.."}'
    assert first["cause"].startswith("502/504 errors: upstream service unreachable")
    assert first["runbook"] == "docs/RUNBOOK.md#high-error-rates"
    assert any(c.startswith("kubectl get pods -l app=api-gateway") for c in first["commands"])
    titles = [f["title"] for f in report["findings"]]
    assert any(t.startswith("upstream:users check failing") for t in titles), report
    upstream = next(f for f in report["findings"] if f["title"].startswith("Upstream users failing"))
    assert upstream["evidence"][0]["metric"] == 'upstream_failures_total{service="users",reason="connect"}'
    severities = [f["severity"] for f in report["findings"]]
    assert severities == sorted(severities)  # ranked, worst first
    # The text form says the same to a person.
    assert text.returncode == 2, text.stdout + text.stderr
    assert text.stdout.startswith("apigate diagnose: SEV1:"), text.stdout
    assert "runbook: docs/RUNBOOK.md#high-error-rates" in text.stdout
    # Recorded scrapes give the same verdict without a gateway.
    (tmp_path / "a.prom").write_text(before)
    (tmp_path / "b.prom").write_text(after)
    code, recorded = diagnose(
        "--from-file", str(tmp_path / "a.prom"), str(tmp_path / "b.prom"), "--interval", "1s"
    )
    assert code == 2, recorded
    assert recorded["findings"][0]["title"].startswith("Error rate 100.0% (5xx: 502)"), recorded


def test_dead_redis_points_at_redis_recovery_and_the_rate_limit_store(
    gateway: GatewayFactory, scripted: Any, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path)
    up = scripted(status_handler)
    mport = free_port()
    gw = gateway(
        {"app": up.url},
        observability=observability(mport, check_redis=True),
        rate_limiting={
            "redis_url": redis.url,
            "failure_mode": "fail_closed",
            "timeout_ms": 50,
            "default_limit": {"limit": 100000, "window_secs": 60},
        },
    )
    assert httpx.get(gw.url + "/x", timeout=5).status_code == 200
    redis.stop()
    wait_ready(mport, "not_ready")  # the next round of checks has seen it
    with traffic(gw.url + "/x"):
        code, report = diagnose(
            "--url", gw.url, "--metrics", f"http://{HOST}:{mport}/metrics", "--interval", "1s"
        )
    assert code == 2, report
    by_runbook = {f["runbook"].split("#")[1]: f for f in report["findings"]}
    assert by_runbook["redis-recovery"]["severity"] == "SEV2"
    assert by_runbook["redis-recovery"]["title"].startswith("Redis check failing")
    store = by_runbook["rate-limiting-problems"]
    assert store["evidence"][0]["metric"].startswith("rate_limit_backend_errors_total{reason=")
    assert store["cause"] == "Rate limiting errors: Redis connection issues (§2.4.3)"
    errors = by_runbook["high-error-rates"]
    assert "503" in errors["title"]


def test_unreachable_gateway_is_sev1(tmp_path: Path) -> None:
    port = free_port()
    code, report = diagnose(
        "--url", f"http://{HOST}:{port}", "--metrics", f"http://{HOST}:{port}/metrics", "--interval", "100ms"
    )
    assert code == 2
    assert report["findings"][0]["title"].startswith("Gateway not answering: GET http://127.0.0.1:")


def test_nothing_to_read_is_a_usage_error(tmp_path: Path) -> None:
    out = apigate_cli("diagnose", "--from-file", str(tmp_path / "missing1"), str(tmp_path / "missing2"))
    assert (
        out.returncode == 3
        and out.stderr.startswith("diagnose: cannot read ")
        and "Traceback" not in out.stderr
    )
    out = apigate_cli("diagnose")
    assert out.returncode == 3 and "give --url" in out.stderr
