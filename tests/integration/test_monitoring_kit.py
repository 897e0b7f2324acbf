"""deploy/: alert rules, their promtool unit tests, Alertmanager routing, the Grafana dashboard.

And the check that keeps them honest: a real apigate, after 200/401/502 traffic, is
scraped, and promtool evaluates `absent(<metric>{<label>!=""})` over that scrape for every
metric and label the alert expressions use — a renamed metric or label breaks the build.
promtool and amtool are required (scripts/install-test-deps.sh); without them these tests
skip, except with CI=true where they fail.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import REPO, GatewayFactory, ScriptedUpstream, require_tool
from test_metrics import scrape_text, send_traffic, status_handler, traffic_gateway

from apigate.telemetry import metrics

DEPLOY = REPO / "deploy"
ALERTS = sorted((DEPLOY / "prometheus" / "alerts").glob("*.yaml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*_test.yaml"))
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yaml"
DASHBOARD = DEPLOY / "grafana" / "apigate-dashboard.json"

# Series the rules use that apigate does not export, and who does.
EXTERNAL = {
    "up": "Prometheus (scrape health)",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
    "container_memory_usage_bytes": "cAdvisor (kubelet)",
    "container_spec_memory_limit_bytes": "cAdvisor (kubelet)",
}
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "absent", "humanizePercentage", "le", "inf", "nan",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def promtool() -> str:
    return require_tool("promtool", "/usr/bin/promtool")


def amtool() -> str:
    return require_tool("amtool", "/usr/bin/amtool")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=120)


def exported() -> set[str]:
    """Every series name apigate can expose (histograms as their three series)."""
    out: set[str] = set()
    for name, fam in metrics.REGISTRY.families.items():
        if fam.kind == "histogram":
            out.update(name + s for s in HISTOGRAM_SUFFIXES)
        else:
            out.add(name)
    return out


def alert_rules() -> list[dict[str, Any]]:
    rules = []
    for path in ALERTS:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules.extend(group["rules"])
    return rules


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, labels it needs) for each metric in a PromQL expression.

    A label named in a matcher or in `by (...)` must exist on the metric; a `_bucket`
    series needs `le` for histogram_quantile.
    """
    by_labels: set[str] = set()
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        by_labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    stripped = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", expr)
    stripped = re.sub(r'"[^"]*"', '""', stripped)  # matcher values are not names
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)  # range selectors: [5m]
    found = []
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", stripped):
        name, matchers, call = m.group(1), m.group(2), m.group(3)
        if call or name in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]?", name):
            continue
        labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers or ""))
        labels |= by_labels
        if name.endswith("_bucket"):
            labels.add("le")
        found.append((name, labels))
    return found


# ------------------------------------------------------------------------------ the rules
def test_promtool_check_rules() -> None:
    out = run(promtool(), "check", "rules", *map(str, ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert [p.name for p in ALERTS] == ["availability.yaml", "dependencies.yaml", "performance.yaml"]


def test_promtool_rule_unit_tests() -> None:
    out = run(promtool(), "test", "rules", *(p.name for p in RULE_TESTS), cwd=RULE_TESTS[0].parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fired: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                bucket = fired if t["exp_alerts"] else quiet
                bucket[t["alertname"]] = bucket.get(t["alertname"], 0) + 1
    names = {r["alert"] for r in alert_rules()}
    assert set(fired) == names
    assert set(quiet) == names


def test_the_guide_alerts_are_all_there() -> None:
    assert {r["alert"]: r["labels"]["severity"] for r in alert_rules()} == {
        "GatewayPodsDown": "critical",
        "HighErrorRate": "critical",
        "HealthCheckFailing": "critical",
        "HighLatency": "warning",
        "HighCPU": "warning",
        "HighMemory": "warning",
        "RedisDown": "critical",
        "UpstreamErrors": "warning",
        "AuthFailureSpike": "warning",
    }


def test_rules_name_only_apigate_or_known_external_metrics() -> None:
    ours = exported()
    for rule in alert_rules():
        for name, _ in selectors(rule["expr"]):
            assert name in ours or name in EXTERNAL, f"{rule['alert']} uses unknown metric {name}"


def test_selector_extraction() -> None:
    got = selectors('sum(rate(upstream_failures_total{reason="x"}[5m])) by (service) > 10')
    assert got == [("upstream_failures_total", {"reason", "service"})]
    got = selectors("histogram_quantile(0.99, rate(http_request_duration_seconds_bucket[5m])) > 0.5")
    assert got == [("http_request_duration_seconds_bucket", {"le"})]


def test_alert_metrics_and_labels_exist_in_a_real_scrape(
    gateway: GatewayFactory, scripted: Any, tmp_path: Path
) -> None:
    """200s, 401s, 502s through a real apigate; promtool proves each alert's series exists."""
    tool = promtool()
    upstream: ScriptedUpstream = scripted(status_handler)
    gw, mport = traffic_gateway(gateway, upstream)
    send_traffic(gw.url)
    text = scrape_text(mport)
    scrape_file = tmp_path / "scrape.prom"
    scrape_file.write_text(text)
    lint = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    series = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, _, val = line.rpartition(" ")
            series.append({"series": name_labels, "values": f"{float(val):g}x3"})
    checks = []
    for rule in alert_rules():
        for name, labels in selectors(rule["expr"]):
            if name in EXTERNAL:
                continue
            for label in sorted(labels) or [None]:
                matcher = f'{{{label}!=""}}' if label else ""
                checks.append({"expr": f"absent({name}{matcher})", "eval_time": "2m", "exp_samples": []})
    checked = {c["expr"] for c in checks}
    assert {
        'absent(http_requests_total{status!=""})',
        'absent(http_request_duration_seconds_bucket{le!=""})',
        'absent(upstream_failures_total{service!=""})',
        "absent(auth_failures_total)",
    } <= checked
    test_file = tmp_path / "scrape_test.yaml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}],
            }
        )
    )
    out = run(tool, "test", "rules", str(test_file))
    assert out.returncode == 0, (
        f"an alert's metric or label is missing from the scrape:\n{out.stdout}{out.stderr}"
    )


# ------------------------------------------------------------------------------ Alertmanager
def test_amtool_check_config() -> None:
    out = run(amtool(), "check-config", str(ALERTMANAGER))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "case",
    yaml.safe_load((DEPLOY / "alertmanager" / "tests" / "routes.yaml").read_text()),
    ids=lambda c: f"{c['labels'].get('severity')}->{c['receivers']}",
)
def test_amtool_routes(case: dict[str, Any]) -> None:
    labels = [f"{k}={v}" for k, v in case["labels"].items()]
    out = run(
        amtool(),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={case['receivers']}",
        *labels,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_routes_cover_critical_to_pagerduty_and_warning_to_slack() -> None:
    cases = yaml.safe_load((DEPLOY / "alertmanager" / "tests" / "routes.yaml").read_text())
    by_severity = {c["labels"].get("severity"): c["receivers"] for c in cases}
    assert by_severity["critical"] == "pagerduty"
    assert by_severity["warning"] == "slack"


# ------------------------------------------------------------------------------ Grafana
def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_is_valid_with_a_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("request rate", "error rate", "p50", "p99", "upstream latency", "upstream failures",
                  "auth failures", "rate-limited", "log sink"):  # fmt: skip
        assert topic in titles, topic


def test_dashboard_queries_name_only_exported_metrics() -> None:
    ours = exported()
    used = set()
    for expr in dashboard_exprs():
        expr = expr.replace("$__rate_interval", "5m")
        for name, _ in selectors(expr):
            assert name in ours, f"dashboard query uses {name}, which apigate does not export: {expr}"
            used.add(name)
    wanted = {
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "upstream_request_duration_seconds_bucket",
        "upstream_failures_total",
        "auth_failures_total",
        "rate_limited_requests_total",
        "log_events_dropped_total",
    }
    assert wanted <= used
