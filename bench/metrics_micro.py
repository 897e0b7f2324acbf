"""Micro-benchmark: cost of recording one request's metrics (MetricsFilter.on_complete).

Compares apigate's registry with prometheus_client doing the same work (counter with
three labels, request histogram, upstream histogram), single-process and multiprocess
mode. Run: .venv/bin/python bench/metrics_micro.py  (prometheus_client is optional).
"""

from __future__ import annotations

import os
import tempfile
import timeit
from types import SimpleNamespace
from typing import Any

from apigate.telemetry import metrics
from apigate.telemetry.filter import MetricsFilter

N = 200_000


def ours() -> float:
    f = MetricsFilter(clock=lambda: 1.0005)
    route = SimpleNamespace(id="users-list")
    ctx: Any = SimpleNamespace(
        route=route,
        method="GET",
        status=200,
        start=1.0,
        upstream_id="user-service",
        upstream_duration=0.0004,
        upstream_failure=None,
        error=None,
    )
    return min(timeit.repeat(lambda: f.on_complete(ctx), number=N, repeat=5)) / N


def prom(multiprocess: bool) -> float:
    if multiprocess:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
    import prometheus_client as pc
    from prometheus_client import values

    if multiprocess:
        values.ValueClass = values.get_value_class()
    reg = pc.CollectorRegistry()
    c = pc.Counter("r", "h", ("method", "route", "status"), registry=reg)
    h = pc.Histogram("d", "h", ("method", "route"), buckets=metrics.REQUEST_BUCKETS, registry=reg)
    u = pc.Histogram("u", "h", ("service",), buckets=metrics.REQUEST_BUCKETS, registry=reg)

    def record() -> None:
        c.labels("GET", "users-list", "200").inc()
        h.labels("GET", "users-list").observe(0.0005)
        u.labels("user-service").observe(0.0004)

    return min(timeit.repeat(record, number=N, repeat=5)) / N


if __name__ == "__main__":
    print(f"apigate registry:                  {ours() * 1e6:.2f} µs/request")
    try:
        print(f"prometheus_client:                 {prom(False) * 1e6:.2f} µs/request")
        print(f"prometheus_client (multiprocess):  {prom(True) * 1e6:.2f} µs/request")
    except ImportError:
        print("prometheus_client not installed: no comparison")
