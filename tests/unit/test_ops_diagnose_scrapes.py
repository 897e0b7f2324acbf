"""apigate diagnose's arithmetic on recorded scrapes: rates, p99, severities, ranking, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apigate.ops.diagnose import Report, Window, analyse, parse_metrics

# Not the data plane: a stale compiled build must not add its notice to stderr.
QUIET = {**os.environ, "APIGATE_PURE": "1"}


def scrape(requests: dict[str, float], buckets: dict[str, float] | None = None, extra: str = "") -> str:
    """A scrape with http_requests_total by status, optional latency buckets, and extra lines."""
    lines = ["# TYPE http_requests_total counter"]
    lines += [
        f'http_requests_total{{method="GET",route="users",status="{s}"}} {n:g}' for s, n in requests.items()
    ]
    for le, n in (buckets or {}).items():
        lines.append(f'http_request_duration_seconds_bucket{{method="GET",route="users",le="{le}"}} {n:g}')
    return "\n".join(lines) + "\n" + extra


def findings(before: str, after: str, seconds: float = 10.0, ready: dict[str, Any] | None = None) -> Report:
    return analyse(Window(parse_metrics(before), parse_metrics(after), seconds), ready, None)


@pytest.mark.parametrize(
    ("errors", "severity"),
    [
        (1000, 1),  # all requests failing
        (600, 2),  # > 50%
        (300, 3),  # 10-50%
        (100, 3),  # 10% exactly: SEV3
        (50, 4),  # above the 0.1% target
        (1, 0),  # 0.1%: within target, no finding
    ],
)
def test_error_rate_maps_to_the_guides_severity(errors: float, severity: int) -> None:
    before = scrape({"200": 0, "502": 0})
    after = scrape({"200": 1000 - errors, "502": errors})
    report = findings(before, after)
    got = [f.severity for f in report.findings if f.title.startswith("Error rate")]
    assert got == ([severity] if severity else [])
    assert report.exit_code() == (0 if not severity else 2 if severity <= 2 else 1)


def test_counters_are_differenced_and_resets_start_from_zero() -> None:
    before = scrape({"200": 5000, "500": 4000})
    after = scrape({"200": 5100, "500": 10})  # the 5xx series restarted (a new pod)
    report = findings(before, after)
    assert report.requests == 110
    assert report.findings[0].title == "Error rate 9.1% (5xx: 500)"
    assert report.findings[0].evidence[0].value == "10 of 110 requests"
    assert report.findings[0].evidence[0].window == "10.0s"


def test_p99_from_histogram_buckets_interpolates_like_prometheus() -> None:
    zero = {"0.1": 0, "0.5": 0, "1.0": 0, "+Inf": 0}
    # 100 requests: 90 under 0.1 s, 9 in (0.5, 1.0], 1 beyond: p99 at the top of (0.5, 1.0].
    after = {"0.1": 90, "0.5": 90, "1.0": 99, "+Inf": 100}
    report = findings(scrape({"200": 0}, zero), scrape({"200": 100}, after))
    latency = next(f for f in report.findings if f.title.startswith("p99 latency"))
    assert latency.title == "p99 latency 1.000s (target < 0.5s)" and latency.severity == 3
    assert latency.runbook == "docs/RUNBOOK.md#high-latency"
    fast = {"0.1": 99, "0.5": 100, "1.0": 100, "+Inf": 100}
    assert not any(
        f.title.startswith("p99")
        for f in findings(scrape({"200": 0}, zero), scrape({"200": 100}, fast)).findings
    )


def test_auth_store_and_log_findings_with_their_runbooks() -> None:
    before = scrape(
        {"200": 0},
        extra=(
            'auth_failures_total{reason="expired"} 0\n'
            'rate_limit_backend_errors_total{reason="timeout"} 0\n'
            'log_events_dropped_total{sink="elasticsearch",reason="spool_full"} 0\n'
        ),
    )
    after = scrape(
        {"200": 100},
        extra=(
            'auth_failures_total{reason="expired"} 2000\n'
            'auth_failures_total{reason="store_unavailable"} 5\n'
            'rate_limit_backend_errors_total{reason="timeout"} 3\n'
            'rate_limit_backend_errors_total{reason="circuit_open"} 40\n'
            'log_events_dropped_total{sink="elasticsearch",reason="spool_full"} 7\n'
            'log_spool_bytes{sink="elasticsearch"} 5e+06\n'
        ),
    )
    report = findings(before, after)
    by_runbook = {f.runbook.split("#")[1]: f for f in report.findings}
    auth = by_runbook["authentication-issues"]
    assert auth.severity == 2 and "session store unavailable" in auth.title and "200.5/s" in auth.title
    store = by_runbook["rate-limiting-problems"]
    assert store.severity == 2 and "breaker open" in store.title
    assert [e.metric for e in store.evidence] == [
        'rate_limit_backend_errors_total{reason="circuit_open"}',
        'rate_limit_backend_errors_total{reason="timeout"}',
    ]
    logs = by_runbook["log-sink-outage"]
    assert logs.severity == 3 and "events dropped" in logs.title
    assert 'log_spool_bytes{sink="elasticsearch"}' in [e.metric for e in logs.evidence]
    assert [f.severity for f in report.findings] == sorted(f.severity for f in report.findings)


def test_readiness_detail_becomes_findings() -> None:
    ready = {
        "status": "not_ready",
        "checks": {
            "redis": {"ok": False, "detail": "ConnectionError: refused"},
            "upstream:users": {"ok": True, "detail": "GET /healthz: 200"},
        },
    }
    report = findings(scrape({"200": 0}), scrape({"200": 0}), ready=ready)
    assert [(f.severity, f.title) for f in report.findings] == [
        (2, "Redis check failing: ConnectionError: refused")
    ]
    assert report.findings[0].runbook == "docs/RUNBOOK.md#redis-recovery"
    starting = {"status": "starting", "checks": {"redis": {"ok": False, "detail": "not checked yet"}}}
    report = findings(scrape({"200": 0}), scrape({"200": 0}), ready=starting)
    assert [(f.severity, f.title) for f in report.findings] == [
        (4, "Instance is starting: its first dependency checks have not finished")
    ]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apigate", "diagnose", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=QUIET,
    )


def test_from_file_exit_codes_and_json(tmp_path: Path) -> None:
    a, b = tmp_path / "a.prom", tmp_path / "b.prom"
    a.write_text(scrape({"200": 0, "503": 0}))
    b.write_text(scrape({"200": 100, "503": 0}))
    out = run("--from-file", str(a), str(b))
    assert out.returncode == 0 and out.stdout.startswith(
        "apigate diagnose: healthy: no findings (window 5.0s"
    )
    b.write_text(scrape({"200": 80, "503": 20}))
    out = run("--from-file", str(a), str(b), "--interval", "30s", "--format", "json")
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["status"] == "SEV3" and data["exit_code"] == 1 and data["window_seconds"] == 30
    assert set(data["findings"][0]) == {"severity", "title", "evidence", "cause", "commands", "runbook"}
    assert data["findings"][0]["cause"].startswith("Gateway or dependency failure (503")


def test_bad_usage(tmp_path: Path) -> None:
    a = tmp_path / "a.prom"
    a.write_text("")
    out = run("--from-file", str(a))
    assert out.returncode == 3 and out.stderr == "diagnose: --from-file takes two scrapes (before, after)\n"
    out = run("--from-file", str(a), str(a), "--interval", "soon")
    assert out.returncode == 2 and "not a duration" in out.stderr
