"""The diagnosis behind `apigate diagnose` and the status page, without I/O.

Two Prometheus scrapes in (`parse_metrics`), a `Window` of what changed between them,
and `analyse` turns it into findings ranked by the guide's §2.2 severities. Lives in
telemetry (below the tools layer) so that the admin listener's /status page computes the
same findings as the command line; ops/diagnose.py adds the fetching and printing.
Thresholds and their sources are listed in ops/diagnose.py's docstring.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from apigate.telemetry import names

EXIT_OK, EXIT_MINOR, EXIT_MAJOR, EXIT_USAGE = 0, 1, 2, 3
RUNBOOK = "docs/RUNBOOK.md"
NS = "production"
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> Series:
    """Prometheus text format 0.0.4 -> {(name, sorted labels): value}."""
    out: Series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        labels = tuple(
            sorted(
                (k, v.replace('\\"', '"').replace("\\\\", "\\")) for k, v in _LABEL.findall(m.group(2) or "")
            )
        )
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


@dataclass(frozen=True)
class Evidence:
    metric: str
    value: str
    window: str


@dataclass
class Finding:
    severity: int  # 1..4 = SEV1..SEV4
    title: str
    evidence: list[Evidence]
    cause: str
    commands: list[str]
    runbook: str
    order: int = 0

    @property
    def label(self) -> str:
        return f"SEV{self.severity}"


@dataclass
class Report:
    window_s: float
    requests: float
    ready: dict[str, Any] | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def worst(self) -> int | None:
        return min((f.severity for f in self.findings), default=None)

    def exit_code(self) -> int:
        worst = self.worst
        return EXIT_OK if worst is None else EXIT_MAJOR if worst <= 2 else EXIT_MINOR


class Window:
    """Differences between two scrapes `seconds` apart (counters that reset count from 0)."""

    def __init__(self, before: Series, after: Series, seconds: float) -> None:
        self.before, self.after, self.seconds = before, after, max(seconds, 1e-9)

    def delta(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        out: dict[tuple[tuple[str, str], ...], float] = {}
        for (n, labels), v in self.after.items():
            if n == name:
                prev = self.before.get((n, labels), 0.0)
                out[labels] = v - prev if v >= prev else v
        return out

    def by(self, name: str, *keys: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, d in self.delta(name).items():
            ld = dict(labels)
            out[tuple(ld.get(k, "") for k in keys)] += d
        return dict(out)

    def gauge(self, name: str, key: str) -> dict[str, float]:
        return {dict(labels).get(key, ""): v for (n, labels), v in self.after.items() if n == name}

    def quantile(self, q: float, name: str, **match: str) -> float | None:
        """histogram_quantile over the window's bucket increases (summed over other labels)."""
        return quantile(q, self.buckets_by(name, "", **match).get("", {}))

    def buckets_by(self, name: str, by: str, **match: str) -> dict[str, dict[float, float]]:
        """{label `by`'s value: {le: increase}} in one pass (`by=""`: everything in one group)."""
        out: dict[str, dict[float, float]] = {}
        for labels, d in self.delta(name + "_bucket").items():
            ld = dict(labels)
            if all(ld.get(k) == v for k, v in match.items()):
                group = out.setdefault(ld.get(by, "") if by else "", defaultdict(float))
                group[math.inf if ld["le"] == "+Inf" else float(ld["le"])] += d
        return out

    @property
    def label(self) -> str:
        return f"{self.seconds:.1f}s"


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile's interpolation over {upper bound: cumulative count}."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == math.inf:
                return prev_bound
            span = buckets[b] - prev_count
            return prev_bound + (b - prev_bound) * ((rank - prev_count) / span if span > 0 else 1.0)
        prev_bound, prev_count = b, buckets[b]
    return prev_bound


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def _kubectl_checks() -> list[str]:
    return [
        f"kubectl get pods -l app=api-gateway -n {NS}",
        f"kubectl get events -n {NS} --sort-by=.lastTimestamp | tail -20",
        f"kubectl logs -l app=api-gateway -n {NS} --tail=100 | grep ERROR",
    ]


def analyse(w: Window, ready: dict[str, Any] | None, ready_error: str | None) -> Report:
    requests = w.by(names.HTTP_REQUESTS_TOTAL, "status", "route")
    total = sum(requests.values())
    report = Report(w.seconds, total, ready)
    add = report.findings.append

    # ---------------------------------------------------------------- readiness
    if ready_error is not None:
        add(
            Finding(
                1,
                f"Gateway not answering: {ready_error}",
                [Evidence("/health/ready", ready_error, "now")],
                "All requests failing: gateway pods down (§2.4.3)",
                [*_kubectl_checks()[:2], f"kubectl rollout status deployment/api-gateway -n {NS}"],
                f"{RUNBOOK}#high-error-rates",
            )
        )
    elif ready is not None and ready.get("status") != "ready":
        checks = ready.get("checks") or {}
        failing = {n: c for n, c in checks.items() if isinstance(c, dict) and not c.get("ok")}
        status = str(ready.get("status"))
        if status in ("draining", "starting"):
            add(
                Finding(
                    4,
                    "Instance is draining (shutting down or being replaced)"
                    if status == "draining"
                    else "Instance is starting: its first dependency checks have not finished",
                    [Evidence("/health/ready", f"503 {status}", "now")],
                    "A rollout or scale-down is in progress",
                    [f"kubectl rollout status deployment/api-gateway -n {NS}"],
                    f"{RUNBOOK}#scaling-the-gateway",
                )
            )
        if status == "starting":
            failing = {}  # "not checked yet" is not a failure
        for check, state in failing.items():
            detail = str(state.get("detail", ""))
            if check == "redis":
                add(
                    Finding(
                        2,
                        f"Redis check failing: {detail}",
                        [Evidence("/health/ready checks.redis", detail, "now")],
                        "Rate limiting errors and authentication failures: Redis/session store down (§2.4.3)",
                        [
                            f"kubectl get statefulset redis-master redis-replica -n {NS}",
                            f"kubectl exec -n {NS} redis-master-0 -- redis-cli PING",
                            f"kubectl logs -n {NS} redis-master-0 --tail=50",
                        ],
                        f"{RUNBOOK}#redis-recovery",
                    )
                )
            else:
                add(
                    Finding(
                        3,
                        f"{check} check failing: {detail}",
                        [Evidence(f"/health/ready checks.{check}", detail, "now")],
                        "502/504 errors: upstream service unreachable (§2.4.3)",
                        [f"kubectl get endpoints -n {NS}", f"kubectl get pods -n {NS} | grep -v api-gateway"],
                        f"{RUNBOOK}#high-error-rates",
                    )
                )

    # ---------------------------------------------------------------- error rate
    if total > 0:
        errors = sum(v for (status, _), v in requests.items() if status.startswith("5"))
        rate = errors / total
        worst_routes = sorted(
            ((v, r) for (s, r), v in requests.items() if s.startswith("5") and v > 0), reverse=True
        )
        sev = 1 if rate >= 0.999 else 2 if rate > 0.5 else 3 if rate >= 0.10 else 4 if rate > 0.001 else 0
        if sev:
            statuses = sorted({s for (s, _), v in requests.items() if s.startswith("5") and v > 0})
            upstream_cause = any(s in ("502", "504") for s in statuses)
            add(
                Finding(
                    sev,
                    f"Error rate {_pct(rate)} (5xx: {', '.join(statuses)})",
                    [
                        Evidence(
                            'http_requests_total{status=~"5.."}', f"{errors:g} of {total:g} requests", w.label
                        ),
                        *(
                            Evidence(f'http_requests_total{{route="{r}",status=~"5.."}}', f"{v:g}", w.label)
                            for v, r in worst_routes[:3]
                        ),
                    ],
                    "502/504 errors: upstream service unreachable (§2.4.3)"
                    if upstream_cause
                    else "Gateway or dependency failure (503: Redis in fail_closed mode, draining, overload)",
                    [
                        "curl -s http://localhost:9090/metrics | grep http_requests_total "
                        "| grep 'status=\"5'",
                        *_kubectl_checks(),
                    ],
                    f"{RUNBOOK}#high-error-rates",
                )
            )

    # ---------------------------------------------------------------- latency
    p99 = w.quantile(0.99, names.HTTP_REQUEST_DURATION_SECONDS)
    if p99 is not None and p99 > 0.5:
        ups = {
            s: w.quantile(0.99, names.UPSTREAM_REQUEST_DURATION_SECONDS, service=s)
            for (s,) in w.by(names.UPSTREAM_REQUEST_DURATION_SECONDS + "_count", "service")
        }
        slow = sorted(((v, s) for s, v in ups.items() if v is not None), reverse=True)
        add(
            Finding(
                2 if p99 > 2.5 else 3,
                f"p99 latency {p99:.3f}s (target < 0.5s)",
                [
                    Evidence(
                        "histogram_quantile(0.99, http_request_duration_seconds_bucket)",
                        f"{p99:.3f}s",
                        w.label,
                    ),
                    *(
                        Evidence(
                            f'upstream_request_duration_seconds p99{{service="{s}"}}', f"{v:.3f}s", w.label
                        )
                        for v, s in slow[:3]
                    ),
                ],
                "High latency: upstream service slow (§2.4.3)"
                if slow and slow[0][0] > 0.5 * p99
                else "Gateway saturated (CPU) or slow dependency",
                [
                    "curl -s http://localhost:9090/metrics | grep upstream_request_duration_seconds",
                    f"kubectl top pods -l app=api-gateway -n {NS}",
                ],
                f"{RUNBOOK}#high-latency",
            )
        )

    # ---------------------------------------------------------------- upstream failures
    for (service,), n in sorted(w.by(names.UPSTREAM_FAILURES_TOTAL, "service").items()):
        if n <= 0:
            continue
        reasons = {
            r: v
            for (s, r), v in w.by(names.UPSTREAM_FAILURES_TOTAL, "service", "reason").items()
            if s == service and v > 0
        }
        per_s = n / w.seconds
        add(
            Finding(
                3 if per_s > 10 else 4,
                f"Upstream {service} failing: {per_s:.1f}/s",
                [
                    Evidence(
                        f'upstream_failures_total{{service="{service}",reason="{r}"}}', f"{v:g}", w.label
                    )
                    for r, v in sorted(reasons.items())
                ],
                "502/504 errors: upstream service unreachable (§2.4.3)"
                if {"connect", "reset"} & set(reasons)
                else "High latency: upstream service slow (§2.4.3)"
                if "timeout" in reasons
                else "Upstream answering errors (5xx or malformed responses)",
                [
                    f"kubectl get endpoints -n {NS}",
                    f"kubectl logs -l app=api-gateway -n {NS} --tail=200 | grep {service}",
                ],
                f"{RUNBOOK}#high-error-rates",
            )
        )

    # ---------------------------------------------------------------- auth
    auth = {r: v for (r,), v in w.by(names.AUTH_FAILURES_TOTAL, "reason").items() if v > 0}
    if auth:
        per_s = sum(auth.values()) / w.seconds
        store = auth.get("store_unavailable", 0) > 0
        sev = 2 if store else 3 if per_s > 100 else 4
        add(
            Finding(
                sev,
                f"Authentication failures: {per_s:.1f}/s" + (" (session store unavailable)" if store else ""),
                [
                    Evidence(f'auth_failures_total{{reason="{r}"}}', f"{v:g}", w.label)
                    for r, v in sorted(auth.items())
                ],
                "Authentication failures: Redis/session store down (§2.4.3)"
                if store
                else "Clients with bad or expired tokens, a key rotation, or an attack",
                [f"kubectl logs -l app=api-gateway -n {NS} --tail=200 | grep auth_failed"],
                f"{RUNBOOK}#authentication-issues",
            )
        )

    # ---------------------------------------------------------------- rate-limit store
    backend = {r: v for (r,), v in w.by(names.RATE_LIMIT_BACKEND_ERRORS_TOTAL, "reason").items() if v > 0}
    if backend:
        breaker_open = backend.get("circuit_open", 0) > 0
        add(
            Finding(
                2 if breaker_open else 3,
                "Rate-limit store: breaker open, limits answered without Redis"
                if breaker_open
                else "Rate-limit store errors",
                [
                    Evidence(f'rate_limit_backend_errors_total{{reason="{r}"}}', f"{v:g}", w.label)
                    for r, v in sorted(backend.items())
                ],
                "Rate limiting errors: Redis connection issues (§2.4.3)",
                [
                    f"kubectl exec -n {NS} redis-master-0 -- redis-cli PING",
                    f"kubectl logs -l app=api-gateway -n {NS} --tail=200 | grep rate_limit",
                ],
                f"{RUNBOOK}#rate-limiting-problems",
            )
        )

    # ---------------------------------------------------------------- log sinks
    dropped = {k: v for k, v in w.by(names.LOG_EVENTS_DROPPED_TOTAL, "sink", "reason").items() if v > 0}
    sink_errors = {s: v for (s,), v in w.by(names.LOG_SINK_ERRORS_TOTAL, "sink").items() if v > 0}
    spool = {s: v for s, v in w.gauge(names.LOG_SPOOL_BYTES, "sink").items() if v > 0}
    queued = {s: v for s, v in w.gauge(names.LOG_SINK_QUEUE_DEPTH, "sink").items() if v > 0}
    if dropped or sink_errors or spool:
        ev = [
            Evidence(f'log_events_dropped_total{{sink="{s}",reason="{r}"}}', f"{v:g}", w.label)
            for (s, r), v in sorted(dropped.items())
        ]
        ev += [
            Evidence(f'log_sink_errors_total{{sink="{s}"}}', f"{v:g}", w.label)
            for s, v in sorted(sink_errors.items())
        ]
        ev += [Evidence(f'log_spool_bytes{{sink="{s}"}}', f"{v:g}", "now") for s, v in sorted(spool.items())]
        ev += [
            Evidence(f'log_sink_queue_depth{{sink="{s}"}}', f"{v:g}", "now")
            for s, v in sorted(queued.items())
        ]
        sinks = sorted({s for s, _ in dropped} | set(sink_errors) | set(spool))
        add(
            Finding(
                3 if dropped else 4,
                f"Log sink trouble: {', '.join(sinks)}" + (" (events dropped)" if dropped else ""),
                ev,
                "A log sink is down or slow; events wait in the disk spool, and are dropped when it is full",
                [f"kubectl logs -l app=api-gateway -n {NS} --tail=200 | grep sink_"],
                f"{RUNBOOK}#log-sink-outage",
            )
        )

    for order, f in enumerate(report.findings):
        f.order = order
    report.findings.sort(key=lambda f: (f.severity, f.order))
    return report
