"""`apigate diagnose`: the guide's §2.4 investigation, done by a program in ten seconds.

It reads `/health/ready` and two `/metrics` scrapes `--interval` apart (or two recorded
scrapes, `--from-file`), computes what changed in between and reports findings ranked by
the §2.2 severity they imply, each with its evidence (metric, value, window), the likely
cause from the §2.4.3 table, the next commands to run and the runbook section.

Exit codes: 0 healthy, 1 only SEV3/SEV4 findings, 2 a SEV1/SEV2 finding, 3 bad usage or
nothing to read (no scrape could be taken).

Thresholds, and where they come from:

* error rate (5xx share): 100% SEV1 "all requests failing", >50% SEV2, 10-50% SEV3 (§2.2);
  above the §3.1 target of 0.1% SEV4. The HighErrorRate alert fires at 5%.
* p99 latency: > 0.5 s SEV3 (the §3.1 target and the HighLatency alert), > 2.5 s SEV2.
* upstream failures: > 10/s for a service SEV3 (the UpstreamErrors alert), any SEV4.
* auth failures: > 100/s SEV3 (AuthFailureSpike); `store_unavailable` SEV2 (sessions down).
* rate-limit store: breaker open (`circuit_open` checks) SEV2, other store errors SEV3.
* log sinks: dropped events SEV3, delivery errors or a growing spool SEV4.
* readiness: unreachable SEV1; a failing redis check SEV2, a failing upstream SEV3.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from apigate.ops.errors import OpsError
from apigate.telemetry.diagnosis import (
    EXIT_USAGE,
    Evidence,
    Finding,
    Report,
    Window,
    analyse,
    parse_metrics,
)

__all__ = ["EXIT_USAGE", "Evidence", "Finding", "Report", "Window", "analyse", "parse_metrics"]


# ------------------------------------------------------------------------------ I/O
def fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; a refused connection is an OpsError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise OpsError(f"GET {url}: {reason}") from e


def default_metrics_url(url: str) -> str:
    """The guide's metrics port (9090) on the gateway's host."""
    parts = urlsplit(url)
    return urlunsplit(("http", f"{parts.hostname}:9090", "/metrics", "", ""))


def parse_interval(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 5s, 500ms, 1m)")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError("the interval must be greater than 0")
    return value


def read_health(url: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        status, body = fetch(url.rstrip("/") + "/health/ready")
    except OpsError as e:
        return None, str(e)
    try:
        data = json.loads(body)
    except ValueError:
        return None, f"/health/ready answered {status} with a non-JSON body"
    if not isinstance(data, dict):
        return None, f"/health/ready answered {status} with unexpected JSON"
    data.setdefault("http_status", status)
    return data, None


def run(args: argparse.Namespace, sleep: Callable[[float], None] = time.sleep) -> Report:
    if args.from_file:
        before, after = (parse_metrics(Path(p).read_text()) for p in args.from_file)
        window = Window(before, after, args.interval)
        ready, ready_error = read_health(args.url) if args.url else (None, None)
        return analyse(window, ready, ready_error)
    if not args.url and not args.metrics:
        raise OpsError("give --url (and --metrics), or --from-file SCRAPE1 SCRAPE2")
    metrics_url = args.metrics or default_metrics_url(args.url)
    ready, ready_error = read_health(args.url) if args.url else (None, None)
    try:
        t0 = time.monotonic()
        first = parse_metrics(fetch(metrics_url)[1].decode("utf-8", "replace"))
        sleep(args.interval)
        t1 = time.monotonic()
        second = parse_metrics(fetch(metrics_url)[1].decode("utf-8", "replace"))
    except OpsError:
        if ready_error is None:
            raise
        return analyse(Window({}, {}, args.interval), None, ready_error)
    return analyse(Window(first, second, t1 - t0), ready, ready_error)


def report_json(r: Report) -> dict[str, Any]:
    worst = r.worst
    return {
        "status": "healthy" if worst is None else f"SEV{worst}",
        "exit_code": r.exit_code(),
        "window_seconds": round(r.window_s, 3),
        "requests": r.requests,
        "ready": r.ready,
        "findings": [
            {"severity": f.label, **{k: v for k, v in asdict(f).items() if k not in ("severity", "order")}}
            for f in r.findings
        ],
    }


def render_text(r: Report) -> str:
    worst = r.worst
    head = "healthy: no findings" if worst is None else f"SEV{worst}: {len(r.findings)} finding(s)"
    lines = [f"apigate diagnose: {head} (window {r.window_s:.1f}s, {r.requests:g} requests)"]
    if r.ready is not None:
        lines.append(f"readiness: {r.ready.get('status')}")
    for n, f in enumerate(r.findings, 1):
        lines.append(f"\n{n}. [{f.label}] {f.title}")
        lines.extend(f"   evidence: {e.metric} = {e.value} (window {e.window})" for e in f.evidence)
        lines.append(f"   likely cause: {f.cause}")
        lines.extend(f"   next: {c}" for c in f.commands)
        lines.append(f"   runbook: {f.runbook}")
    return "\n".join(lines)


def cmd_diagnose(args: argparse.Namespace) -> int:
    import sys

    if args.from_file and len(args.from_file) != 2:
        print("diagnose: --from-file takes two scrapes (before, after)", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = run(args)
    except OpsError as e:
        print(f"diagnose: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"diagnose: cannot read {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report_json(report), indent=2) if args.format == "json" else render_text(report))
    return report.exit_code()


def add_command(sub: Any, guarded: Callable[..., Any]) -> None:
    d = sub.add_parser(
        "diagnose",
        help="read health and two metric scrapes; report ranked findings (exit 0/1/2)",
        description="Incident diagnosis (guide §2.4): readiness and two /metrics scrapes, findings ranked by "
        "severity with evidence, likely cause, next commands and runbook section. Exit 0 healthy, "
        "1 SEV3/SEV4 findings, 2 SEV1/SEV2, 3 nothing could be read.",
    )
    d.add_argument("--url", metavar="URL", help="the gateway (for /health/ready), e.g. http://localhost:8080")
    d.add_argument("--metrics", metavar="URL", help="its /metrics (default: port 9090 on --url's host)")
    d.add_argument(
        "--interval",
        type=parse_interval,
        default=5.0,
        metavar="DURATION",
        help="between the two scrapes (5s); with --from-file, the time they were apart",
    )
    d.add_argument("--format", choices=("text", "json"), default="text")
    d.add_argument("--from-file", nargs="+", metavar="SCRAPE", help="two recorded scrapes: before after")
    d.set_defaults(ops=cmd_diagnose)
