"""The run's report: the JSON document (`--report`), the §3.7 criteria and the text summary.

Field names are an interface: `apigate capacity --from-loadtest` reads `requests`,
`errors`, `achieved_rps`, `latency_ms.p99` and `criteria.passed`, and docs/LOAD_TESTING.md
lists every field (tests/unit/test_loadtest_report.py checks both against this module).
"""

from __future__ import annotations

from typing import Any

from apigate import __version__
from apigate.loadtest import histogram
from apigate.loadtest.runner import RunResult
from apigate.loadtest.worker import STATUS_ERROR_MIN

KEEP_UP_RATIO = 0.98  # achieved below 98 % of the target: the generator did not keep up
LAG_CPU_MS = 10.0  # timer lag p99 above this: the generator's own CPU was the limit
REPORT_VERSION = 1


def _is_error(status: int) -> bool:
    return status >= STATUS_ERROR_MIN or status < 200


def _pct(part: float, whole: float) -> float:
    return round(100.0 * part / whole, 4) if whole else 0.0


def breaking_point(
    timeline: list[dict[str, Any]], p99_limit_ms: float, max_error_pct: float
) -> dict[str, Any] | None:
    """The first second whose p99 or error rate breaks the criteria."""
    for entry in timeline:
        done = entry["achieved_rps"]
        rate = _pct(entry["errors"], done)
        reasons = []
        if done and entry["p99_ms"] >= p99_limit_ms:
            reasons.append(f"p99 {entry['p99_ms']:g} ms >= {p99_limit_ms:g} ms")
        if done and rate >= max_error_pct:
            reasons.append(f"error rate {rate:g} % >= {max_error_pct:g} %")
        if reasons:
            return {
                "t": entry["t"],
                "target_rps": entry["target_rps"],
                "achieved_rps": entry["achieved_rps"],
                "p99_ms": entry["p99_ms"],
                "error_rate_pct": rate,
                "reason": "; ".join(reasons),
            }
    return None


def build(
    result: RunResult, p99_limit_ms: float, max_error_pct: float, server: dict[str, Any] | None
) -> dict[str, Any]:
    profile = result.profile
    responses = sum(result.statuses.values())
    failed = sum(result.error_kinds.values())
    requests = responses + failed
    status_errors = {str(s): n for s, n in sorted(result.statuses.items()) if _is_error(s)}
    errors = sum(status_errors.values()) + failed
    window = profile.duration if not result.interrupted else max(result.last_send, 1e-9)
    window = max(window, result.last_send)
    achieved = result.sent / window if window else 0.0
    target_rps = profile.mean_rps
    targets = profile.targets_per_second()
    timeline = []
    for t in range(max(len(targets), len(result.seconds))):
        s = result.seconds[t] if t < len(result.seconds) else None
        timeline.append(
            {
                "t": t,
                "target_rps": targets[t] if t < len(targets) else 0,
                "achieved_rps": s.done if s else 0,
                "p99_ms": s.p99() if s else 0.0,
                "errors": s.errors if s else 0,
            }
        )
    latency = histogram.summary_ms(result.latency)
    error_rate = _pct(errors, requests)
    lag = histogram.summary_ms(result.lag)
    kept_up = achieved >= KEEP_UP_RATIO * target_rps and not result.interrupted
    note = ""
    if not kept_up and not result.interrupted:
        note = (
            f"the generator could not keep up: achieved {achieved:.1f} req/s is below 98 % of the target "
            f"{target_rps:.1f}"
        )
        if lag["p99"] > LAG_CPU_MS:
            note += f" (its timers ran {lag['p99']:g} ms late at p99: it was short of CPU; add --workers)"
        elif result.max_queue:
            note += (
                f" (all {result.connections} connections were busy, up to {result.max_queue} requests waited:"
                " the server is slow or --connections is too low)"
            )
    criteria: dict[str, Any] = {
        "p99_ms": {"value": latency["p99"], "limit": p99_limit_ms, "passed": latency["p99"] < p99_limit_ms},
        "error_rate_pct": {"value": error_rate, "limit": max_error_pct, "passed": error_rate < max_error_pct},
    }
    passed = responses > 0 and all(c["passed"] for c in criteria.values())
    failure = ""
    if responses == 0:
        kind, example = next(iter(result.error_examples.items()), ("none", "no request was sent"))
        failure = f"no request got a response ({kind}: {example})"
    criteria["passed"] = passed
    if failure:
        criteria["failure"] = failure
    if server is not None and server.get("restarted"):
        criteria["no_restarts"] = {"value": False, "limit": True, "passed": False}
        criteria["passed"] = False
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "tool": f"apigate {__version__} loadtest",
        "started_at": result.started_at,
        "url": result.target.url,
        "method": result.target.method,
        "profile": {
            "kind": profile.kind,
            "description": profile.description,
            "duration_s": round(profile.duration, 3),
            "target_requests": profile.total,
            "target_rps": round(target_rps, 3),
        },
        "workers": result.workers,
        "connections": result.connections,
        "timeout_s": result.timeout,
        "interrupted": result.interrupted,
        "requests": requests,
        "responses": responses,
        "errors": errors,
        "error_rate_pct": error_rate,
        "errors_by_status": status_errors,
        "errors_by_kind": dict(sorted(result.error_kinds.items())),
        "error_examples": dict(sorted(result.error_examples.items())),
        "statuses": {str(s): n for s, n in sorted(result.statuses.items())},
        "achieved_rps": round(achieved, 3),
        "target_rps": round(target_rps, 3),
        "elapsed_s": round(result.elapsed, 3),
        "latency_ms": latency,
        "latency_from_send_ms": histogram.summary_ms(result.send_latency),
        "generator": {
            "kept_up": kept_up,
            "note": note,
            "timer_lag_ms": {"p50": lag["p50"], "p99": lag["p99"], "max": lag["max"]},
            "queued_for_connection": result.queued,
            "max_queue": result.max_queue,
            "connections_opened": result.connections_opened,
            "cpu_s": round(result.cpu_s, 3),
            "cpu_us_per_request": round(result.cpu_s * 1e6 / requests, 1) if requests else 0.0,
        },
        "criteria": criteria,
        "breaking_point": breaking_point(timeline, p99_limit_ms, max_error_pct),
        "timeline": timeline,
    }
    if server is not None:
        report["server_view"] = server
    return report


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def summary(report: dict[str, Any]) -> str:
    r = report
    lat, send, gen, crit = r["latency_ms"], r["latency_from_send_ms"], r["generator"], r["criteria"]
    lines = [
        f"apigate loadtest: {r['method']} {r['url']}",
        f"  profile    {r['profile']['description']}; {r['workers']} worker(s), "
        f"{r['connections']} connections",
        f"  requests   {r['requests']} of {r['profile']['target_requests']} scheduled; achieved "
        f"{r['achieved_rps']:.1f} req/s (target {r['target_rps']:.1f})"
        + ("  [interrupted]" if r["interrupted"] else ""),
        f"  errors     {r['errors']} ({r['error_rate_pct']:g} %)" + _breakdown(r),
        "  latency    from due time  "
        + "  ".join(f"{k} {_ms(lat[k])}" for k in ("p50", "p90", "p99", "p999", "max"))
        + " ms",
        "             from send      "
        + "  ".join(f"{k} {_ms(send[k])}" for k in ("p50", "p90", "p99", "p999", "max"))
        + " ms",
        f"  generator  timer lag p99 {_ms(gen['timer_lag_ms']['p99'])} ms, "
        f"max {_ms(gen['timer_lag_ms']['max'])} ms;"
        f" {gen['cpu_us_per_request']:g} us of CPU per request;"
        f" {gen['queued_for_connection']} request(s) waited for a free connection",
    ]
    if gen["note"]:
        lines.append(f"  warning    {gen['note']}")
    server = r.get("server_view")
    if server is not None:
        if "error" in server:
            lines.append(f"  server     {server['error']}")
        else:
            p99 = "-" if server["p99_ms"] is None else f"{_ms(server['p99_ms'])} ms"
            restart = (
                "RESTARTED: " + "; ".join(server["restart_evidence"]) if server["restarted"] else "no restart"
            )
            lines.append(
                f"  server     counted {server['requests']} requests, {server['errors_5xx']} 5xx, p99 {p99} "
                f"(histogram buckets); {restart}"
            )
    bp = r["breaking_point"]
    if bp is not None:
        lines.append(f"  breaking   at t={bp['t']}s, target {bp['target_rps']} req/s: {bp['reason']}")
    verdict = "PASS" if crit["passed"] else "FAIL"
    p, e = crit["p99_ms"], crit["error_rate_pct"]
    text = (
        f"{verdict}  p99 {_ms(p['value'])} ms {'<' if p['passed'] else '>='} {p['limit']:g} ms; "
        f"error rate {e['value']:g} % {'<' if e['passed'] else '>='} {e['limit']:g} %"
    )
    if "failure" in crit:  # no latency to judge: the connection error is the verdict
        text = f"FAIL  {crit['failure']}"
    if "no_restarts" in crit:
        text += "; the server restarted during the run"
    lines.append(text)
    return "\n".join(lines)


def _breakdown(r: dict[str, Any]) -> str:
    parts = [f"{s} x{n}" for s, n in r["errors_by_status"].items()]
    parts += [f"{k} x{n}" for k, n in r["errors_by_kind"].items()]
    return f"  [{', '.join(parts)}]" if parts else ""
