"""`apigate capacity`: the guide's capacity arithmetic (§3.2.2, §3.4, §3.5), done once, right.

    instances  = ceil(peak RPS / RPS per instance * safety factor), at least HPA_MIN_REPLICAS
    Redis      = (sessions * session size + rate-limit keys * key size) * 1.5      (§3.4.1)
    pool       = max concurrent requests per instance; per upstream instance:
                 gateway instances * concurrent per instance / upstream instances (§3.4.2)
    projection = the same at 6 and 12 months, growing by --growth per year, compounded

The guide's §3.5 table doubles the peak every six months while calling it "100% YoY"
growth; here --growth is per year and compounds (100%: x1.41 at 6 months, x2 at 12).
Units are decimal (1 KB = 1000 bytes), as in the guide's example.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apigate.ops.errors import OpsError

HPA_MIN_REPLICAS = 3  # §3.3.1 minReplicas, and §3.5's "Current" row
DEFAULT_PER_INSTANCE_RPS = 10_000.0  # §3.1 throughput target
DEFAULT_SAFETY = 1.5  # §3.2.2 normal operations
PEAK_EVENT_SAFETY = 3.0  # §3.2.2 peak events: what maxReplicas must absorb
REDIS_OVERHEAD = 1.5  # §3.4.1 "+ 50% overhead"
REDIS_MIN_RECOMMENDED = 2_000_000_000  # §3.4.1 "2-4 GB minimum"
HPA_TARGET_SHARE = 0.8  # §3.3.1: averageValue 8000 for 10,000 per instance
REDIS_POOL_PER_INSTANCE = 10  # §3.4.1 "10 connections per gateway instance"
LOADTEST_FIELDS = ("per_instance_rps", "achieved_rps", "throughput_rps", "requests_per_second", "rps")


@dataclass(frozen=True)
class Inputs:
    peak_rps: float
    per_instance_rps: float
    safety: float = DEFAULT_SAFETY
    sessions: int = 0
    session_kb: float = 1.0
    rl_keys: int = 0
    rl_key_bytes: int = 100
    growth: float = 1.0  # per year: 1.0 = +100%
    max_concurrent: int = 100
    upstream_instances: int = 5


@dataclass(frozen=True)
class Point:
    months: int
    peak_rps: float
    instances: int
    redis_memory_bytes: int


@dataclass(frozen=True)
class Plan:
    inputs: Inputs
    instances: int
    instances_by_formula: float
    redis_memory_bytes: int
    redis_recommended_bytes: int
    pool_per_instance: int
    connections_per_upstream_instance: int
    redis_connections: int
    projection: list[Point] = field(default_factory=list)
    hpa_min_replicas: int = HPA_MIN_REPLICAS
    hpa_max_replicas: int = HPA_MIN_REPLICAS
    hpa_target_rps_per_pod: int = 0


def instances_for(peak_rps: float, per_instance_rps: float, safety: float) -> tuple[int, float]:
    """(instances, the formula's raw value): never fewer than the HPA minimum."""
    raw = peak_rps / per_instance_rps * safety
    return max(HPA_MIN_REPLICAS, math.ceil(raw - 1e-9)), raw


def redis_bytes(sessions: float, session_kb: float, rl_keys: float, rl_key_bytes: float) -> int:
    return math.ceil((sessions * session_kb * 1000 + rl_keys * rl_key_bytes) * REDIS_OVERHEAD)


def plan(i: Inputs) -> Plan:
    for name, flag in (
        ("peak_rps", "--peak-rps"),
        ("per_instance_rps", "--per-instance"),
        ("safety", "--safety"),
    ):
        if getattr(i, name) <= 0:
            raise OpsError(f"{flag} must be greater than 0")
    if i.growth < 0 or i.upstream_instances < 1 or i.max_concurrent < 1:
        raise OpsError("--growth must be >= 0, --upstream-instances and --max-concurrent >= 1")
    n, raw = instances_for(i.peak_rps, i.per_instance_rps, i.safety)
    mem = redis_bytes(i.sessions, i.session_kb, i.rl_keys, i.rl_key_bytes)
    points = []
    for months in (0, 6, 12):
        factor = (1 + i.growth) ** (months / 12)
        peak = i.peak_rps * factor
        points.append(
            Point(
                months,
                round(peak, 1),
                instances_for(peak, i.per_instance_rps, i.safety)[0],
                redis_bytes(i.sessions * factor, i.session_kb, i.rl_keys * factor, i.rl_key_bytes),
            )
        )
    max_replicas = max(n, instances_for(points[-1].peak_rps, i.per_instance_rps, PEAK_EVENT_SAFETY)[0])
    return Plan(
        inputs=i,
        instances=n,
        instances_by_formula=round(raw, 3),
        redis_memory_bytes=mem,
        redis_recommended_bytes=max(mem, REDIS_MIN_RECOMMENDED),
        pool_per_instance=i.max_concurrent,
        connections_per_upstream_instance=math.ceil(n * i.max_concurrent / i.upstream_instances),
        redis_connections=n * REDIS_POOL_PER_INSTANCE,
        projection=points,
        hpa_min_replicas=n,
        hpa_max_replicas=max_replicas,
        hpa_target_rps_per_pod=int(i.per_instance_rps * HPA_TARGET_SHARE),
    )


def per_instance_from_loadtest(path: Path) -> float:
    """The sustained requests/second a load-test report measured for one instance."""
    try:
        report = json.loads(path.read_text())
    except OSError as e:
        raise OpsError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise OpsError(f"{path} is not JSON: {e}") from e
    for scope in (report, report.get("summary") if isinstance(report, dict) else None):
        if isinstance(scope, dict):
            for key in LOADTEST_FIELDS:
                value = scope.get(key)
                if isinstance(value, (int, float)) and value > 0:
                    return float(value)
    raise OpsError(f"{path}: no positive {' / '.join(LOADTEST_FIELDS)} field (top level or under 'summary')")


def percent(text: str) -> float:
    """'100%' or '1.0' -> 1.0."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r} (e.g. 100%)") from None


def _mb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def render_text(p: Plan) -> str:
    i = p.inputs
    lines = [
        f"Instances: {p.instances}   ({i.peak_rps:g} peak RPS / {i.per_instance_rps:g} per instance "
        f"x {i.safety:g} safety = {p.instances_by_formula:g}; at least {HPA_MIN_REPLICAS}, the HPA minimum)",
        f"HPA: minReplicas {p.hpa_min_replicas}, maxReplicas {p.hpa_max_replicas} (12-month peak x "
        f"{PEAK_EVENT_SAFETY:g}), http_requests_per_second averageValue {p.hpa_target_rps_per_pod}",
        f"Redis memory: {_mb(p.redis_memory_bytes)} ({i.sessions} sessions x {i.session_kb:g} KB + "
        f"{i.rl_keys} rate-limit keys x {i.rl_key_bytes} B, + 50%); provision at least "
        f"{_mb(p.redis_recommended_bytes)}; {p.redis_connections} client connections",
        f"Upstream pools: pool_max_idle_per_host {p.pool_per_instance} per gateway instance; "
        f"{p.connections_per_upstream_instance} connections per upstream instance "
        f"({p.instances} x {i.max_concurrent} / {i.upstream_instances})",
        f"Projection (+{i.growth * 100:g}% a year):",
        "  months   peak RPS   instances   Redis memory",
    ]
    for pt in p.projection:
        lines.append(
            f"  {pt.months:>6}   {pt.peak_rps:>8g}   {pt.instances:>9}   {_mb(pt.redis_memory_bytes):>12}"
        )
    return "\n".join(lines)


def plan_json(p: Plan) -> dict[str, Any]:
    out = asdict(p)
    out["hpa"] = {
        "min_replicas": out.pop("hpa_min_replicas"),
        "max_replicas": out.pop("hpa_max_replicas"),
        "target_rps_per_pod": out.pop("hpa_target_rps_per_pod"),
    }
    return out


def cmd_capacity(args: argparse.Namespace) -> int:
    per = args.per_instance
    if args.from_loadtest is not None:
        per = per_instance_from_loadtest(args.from_loadtest)
    inputs = Inputs(
        peak_rps=args.peak_rps,
        per_instance_rps=per if per is not None else DEFAULT_PER_INSTANCE_RPS,
        safety=args.safety,
        sessions=args.sessions,
        session_kb=args.session_kb,
        rl_keys=args.rl_keys,
        rl_key_bytes=args.rl_key_bytes,
        growth=args.growth,
        max_concurrent=args.max_concurrent,
        upstream_instances=args.upstream_instances,
    )
    p = plan(inputs)
    print(json.dumps(plan_json(p), indent=2) if args.format == "json" else render_text(p))
    return 0


def add_command(sub: Any, guarded: Callable[..., Any]) -> None:
    c = sub.add_parser(
        "capacity",
        help="instances, Redis memory, pool sizes and HPA bounds for a peak load",
        description="Capacity plan by the guide's formulas (§3.2.2, §3.4, §3.5); docs/OPERATIONS.md.",
    )
    c.add_argument("--peak-rps", type=float, required=True, metavar="N", help="peak requests/second")
    per = c.add_mutually_exclusive_group()
    per.add_argument("--per-instance", type=float, metavar="R", help="sustained RPS per instance (10000)")
    per.add_argument("--from-loadtest", type=Path, metavar="REPORT", help="a load-test JSON report")
    c.add_argument(
        "--safety", type=float, default=DEFAULT_SAFETY, help="safety factor (1.5; HA 2.0, peaks 3.0)"
    )
    c.add_argument("--sessions", type=int, default=0, metavar="N", help="active sessions")
    c.add_argument("--session-kb", type=float, default=1.0, metavar="K", help="size of a session (1 KB)")
    c.add_argument("--rl-keys", type=int, default=0, metavar="N", help="distinct rate-limit keys")
    c.add_argument(
        "--rl-key-bytes", type=int, default=100, metavar="B", help="size of a rate-limit key (100)"
    )
    c.add_argument(
        "--growth", type=percent, default=1.0, metavar="PCT", help="traffic growth per year (100%%)"
    )
    c.add_argument(
        "--max-concurrent", type=int, default=100, metavar="N", help="concurrent requests per instance (100)"
    )
    c.add_argument(
        "--upstream-instances", type=int, default=5, metavar="N", help="instances per upstream (5)"
    )
    c.add_argument("--format", choices=("text", "json"), default="text")
    c.set_defaults(ops=guarded("capacity", cmd_capacity))
