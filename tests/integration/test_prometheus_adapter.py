"""deploy/prometheus-adapter/rules.yaml: the metric the HPA scales on, derived from a real
scrape. Two scrapes of a running apigate, N requests apart, become the series Prometheus
would hold for two pods (with the namespace and pod labels its pod discovery adds, plus a
pod of another namespace); promtool evaluates the adapter's query as the adapter renders
it for the HPA and must find N/60 requests per second for the busy pod and 0 for the idle one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml
from harness import REPO, GatewayFactory, ScriptedUpstream, require_tool
from test_metrics import scrape_text, status_handler, traffic_gateway

RULES = REPO / "deploy" / "prometheus-adapter" / "rules.yaml"
HPA = REPO / "deploy" / "k8s" / "base" / "autoscaling.yaml"
REQUESTS = 90


def series_lines(text: str, name: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample of one metric in a scrape."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def with_labels(series: str, **labels: str) -> str:
    extra = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return series[:-1] + "," + extra + "}"


def render(rule: dict[str, Any], matchers: str, group_by: str) -> str:
    """The adapter's template, filled in as it does for a Pods metric of one namespace."""
    series = rule["seriesQuery"].split("{", 1)[0]
    query: str = rule["metricsQuery"]
    return (
        query.replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", group_by)
    )


def test_adapter_rule_serves_the_hpas_metric_from_http_requests_total(
    gateway: GatewayFactory, scripted: Any, tmp_path: Path
) -> None:
    tool = require_tool("promtool", "/usr/bin/promtool")
    (rule,) = yaml.safe_load(RULES.read_text())["rules"]
    hpa = next(d for d in yaml.safe_load_all(HPA.read_text()) if d["kind"] == "HorizontalPodAutoscaler")
    (pods_metric,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert rule["name"]["as"] == pods_metric["metric"]["name"] == "http_requests_per_second"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}

    upstream: ScriptedUpstream = scripted(status_handler)
    gw, mport = traffic_gateway(gateway, upstream)
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        assert c.get("/public/warmup").status_code == 200
        before = series_lines(scrape_text(mport), "http_requests_total")
        for i in range(REQUESTS):
            assert c.get(f"/public/{i}").status_code == 200
    after = series_lines(scrape_text(mport), "http_requests_total")
    assert before and sum(after.values()) - sum(before.values()) == REQUESTS

    # One sample a minute: the busy pod's counters grow by the recorded difference every
    # minute, the idle pod's stay, and a pod of another namespace grows but must not count.
    input_series = []
    for series in sorted(after):
        a, b = before.get(series, 0.0), after[series]
        grow = " ".join(f"{a + (b - a) * k:g}" for k in range(6))
        flat = " ".join(f"{a:g}" for _ in range(6))
        input_series += [
            {"series": with_labels(series, namespace="production", pod="api-gateway-busy"), "values": grow},
            {"series": with_labels(series, namespace="production", pod="api-gateway-idle"), "values": flat},
            {"series": with_labels(series, namespace="staging", pod="api-gateway-busy"), "values": grow},
        ]
    query = render(rule, 'namespace="production",pod=~"api-gateway-busy|api-gateway-idle"', "pod")
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": input_series,
                "promql_expr_test": [
                    {
                        "expr": query,
                        "eval_time": "5m",
                        "exp_samples": [
                            {"labels": '{pod="api-gateway-busy"}', "value": REQUESTS / 60},
                            {"labels": '{pod="api-gateway-idle"}', "value": 0},
                        ],
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "adapter_test.yaml"
    test_file.write_text(yaml.safe_dump(test))
    out = subprocess.run([tool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{query}\n{out.stdout}{out.stderr}"
