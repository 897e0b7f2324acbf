"""The metrics filter: one `on_complete` per request, a handful of dict updates.

Recorded after the response (the filter contract's log phase), never on the way in, so
a request is never slowed by its own bookkeeping before the client has its answer.
Per (method, route) one small record holds everything a request updates, so a request
costs one tuple, one dict lookup, an int-keyed counter and two bisects (bench/metrics_micro.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from apigate.gateway.filters import Filter, RequestContext, RequestOutcome, Response
from apigate.gateway.router import Route
from apigate.http import clock as request_clock
from apigate.http.errors import json_headers
from apigate.telemetry import metrics
from apigate.telemetry.health import HEALTH_LIVE, HEALTH_READY, Health

HEALTH_PATHS = frozenset({HEALTH_LIVE, HEALTH_READY})

UNMATCHED = "unmatched"  # the route label of requests that matched no route (bounded cardinality)
_BOUNDS = metrics.HTTP_REQUEST_DURATION.buckets
_UPSTREAM_BOUNDS = metrics.UPSTREAM_REQUEST_DURATION.buckets


class _Series:
    """What one (method, route) updates per request, found with a single dict lookup.

    `durations` and `upstream` are the very lists the registry renders; `statuses`
    (status code -> count) is copied into http_requests_total at scrape time.
    """

    __slots__ = ("durations", "statuses", "upstream")

    def __init__(self, method: str, route: str) -> None:
        self.statuses: dict[int, float] = {}
        self.durations = metrics.HTTP_REQUEST_DURATION.series.setdefault(
            (method, route), [0.0] * (len(_BOUNDS) + 2)
        )
        self.upstream: list[float] | None = None  # bound at the route's first upstream answer


# Process-wide, like the registry: every MetricsFilter (one per App) adds to the same series.
_SERIES: dict[tuple[str, str], _Series] = {}


def _collect_requests() -> None:
    series = metrics.HTTP_REQUESTS.series
    for (method, route), s in list(_SERIES.items()):
        for status, n in list(s.statuses.items()):
            series[(method, route, status)] = n


metrics.REGISTRY.add_collector("http_requests", _collect_requests)


class MetricsFilter(Filter):
    """http_requests_total, the two latency histograms and upstream_failures_total."""

    name = "metrics"
    priority = -10_000  # on_complete only; the order among on_complete filters does not matter

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock if clock is not None else request_clock.now  # ctx.start's clock
        self.series = _SERIES
        self.upstream_failures = metrics.UPSTREAM_FAILURES.series

    def on_complete(self, ctx: RequestContext) -> None:
        route = ctx.route
        if route is None:
            if ctx.path in HEALTH_PATHS:
                return  # a probe, not traffic: a readiness 503 while draining is no error rate
            key = (ctx.method, UNMATCHED)
        else:
            key = (ctx.method, route.id)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = _Series(*key)
        statuses = s.statuses
        status = ctx.status
        statuses[status] = statuses.get(status, 0.0) + 1.0
        elapsed = self.clock() - ctx.start
        d = s.durations
        d[bisect_left(_BOUNDS, elapsed)] += 1.0
        d[-1] += elapsed
        if route is None:
            return
        up = ctx.upstream_duration
        if up is not None:
            u = s.upstream
            if u is None:
                u = s.upstream = metrics.UPSTREAM_REQUEST_DURATION.series.setdefault(
                    (ctx.upstream_id or route.upstream_id,), [0.0] * (len(_UPSTREAM_BOUNDS) + 2)
                )
            u[bisect_left(_UPSTREAM_BOUNDS, up)] += 1.0
            u[-1] += up
        reason = ctx.upstream_failure
        if reason is None:
            if status < 500 or ctx.error is not None or up is None:
                return
            reason = "5xx"  # the upstream answered, with a server error
        fkey = (ctx.upstream_id or route.upstream_id, reason)
        failures = self.upstream_failures
        failures[fkey] = failures.get(fkey, 0.0) + 1.0


class HealthFilter(Filter):
    """/health/live and /health/ready on the main port even when a route's pattern covers them.

    A path no route matches reaches the health endpoints through the gateway's local
    reply; this filter is for routes like `/*` that would otherwise proxy (and
    authenticate, rate-limit) a probe. It joins only the chains of routes that can match
    a health path, ahead of every other filter, so other routes pay nothing.
    """

    name = "health"
    priority = 1_000_000  # before correlation, auth and rate limits

    def __init__(self, health: Health) -> None:
        self.health = health

    def applies_to(self, route: Route | None) -> bool:
        if route is None:
            return False
        if route.pattern is None:
            return route.prefix in HEALTH_PATHS
        return any(route.pattern.match(p) for p in HEALTH_PATHS)

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        if ctx.path not in HEALTH_PATHS:
            return None
        answer = self.health.answer(ctx.path)
        if answer is None:
            return None  # that endpoint is disabled: the route has it
        ctx.route = None  # answered by the gateway, not the route: metrics skip probes
        return Response(answer[0], json_headers(), answer[1])
