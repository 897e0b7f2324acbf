"""The metrics filter: one `on_complete` per request, a handful of dict updates.

Recorded after the response (the filter contract's log phase), never on the way in, so
a request is never slowed by its own bookkeeping before the client has its answer.
The series are keyed by plain tuples and the families are bound to locals once here,
which keeps the whole of `on_complete` near a microsecond (bench/metrics_micro.py).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Callable

from apigate.gateway.context import RequestContext
from apigate.gateway.filters import Filter, RequestOutcome, Response
from apigate.gateway.router import Route
from apigate.http.headers import Headers
from apigate.telemetry import metrics
from apigate.telemetry.health import HEALTH_LIVE, HEALTH_READY, Health

HEALTH_PATHS = frozenset({HEALTH_LIVE, HEALTH_READY})
HEALTH_HEADERS: Headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]

UNMATCHED = "unmatched"  # the route label of requests that matched no route (bounded cardinality)


class MetricsFilter(Filter):
    """http_requests_total, the two latency histograms and upstream_failures_total."""

    name = "metrics"
    priority = -10_000  # on_complete only; the order among on_complete filters does not matter

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        # The event loop's clock (ctx.start comes from it), bound at the first request:
        # filters may be built before the worker's loop runs.
        self.clock = clock if clock is not None else self._bind_clock
        self.requests = metrics.HTTP_REQUESTS.series
        self.durations = metrics.HTTP_REQUEST_DURATION.series
        self.upstream_durations = metrics.UPSTREAM_REQUEST_DURATION.series
        self.upstream_failures = metrics.UPSTREAM_FAILURES.series
        self.bounds = metrics.HTTP_REQUEST_DURATION.buckets
        self.upstream_bounds = metrics.UPSTREAM_REQUEST_DURATION.buckets

    def _bind_clock(self) -> float:
        self.clock = asyncio.get_running_loop().time
        return self.clock()

    def on_complete(self, ctx: RequestContext) -> None:
        route = ctx.route
        rid = UNMATCHED if route is None else route.id
        method = ctx.method
        key = (method, rid, ctx.status)
        requests = self.requests
        requests[key] = requests.get(key, 0.0) + 1.0
        elapsed = self.clock() - ctx.start
        hkey = (method, rid)
        s = self.durations.get(hkey)
        if s is None:
            s = self.durations[hkey] = [0.0] * (len(self.bounds) + 2)
        s[bisect_left(self.bounds, elapsed)] += 1.0
        s[-1] += elapsed
        service = ctx.upstream_id
        if service is None or route is None:
            return
        up = ctx.upstream_duration
        if up is not None:
            ukey = (service,)
            u = self.upstream_durations.get(ukey)
            if u is None:
                u = self.upstream_durations[ukey] = [0.0] * (len(self.upstream_bounds) + 2)
            u[bisect_left(self.upstream_bounds, up)] += 1.0
            u[-1] += up
        reason = ctx.upstream_failure
        if reason is None:
            if ctx.status < 500 or ctx.error is not None or up is None:
                return
            reason = "5xx"  # the upstream answered, with a server error
        fkey = (service, reason)
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

    def __init__(self) -> None:
        self.health: Health | None = None  # bound by Telemetry once the App has built it

    def applies_to(self, route: Route | None) -> bool:
        if route is None:
            return False
        if route.pattern is None:
            return route.prefix in HEALTH_PATHS
        return any(route.pattern.match(p) for p in HEALTH_PATHS)

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        health = self.health
        if health is None or ctx.path not in HEALTH_PATHS:
            return None
        answer = health.answer(ctx.path)
        if answer is None:
            return None  # that endpoint is disabled: the route has it
        return Response(answer[0], list(HEALTH_HEADERS), answer[1])
