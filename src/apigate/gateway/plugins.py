"""Which filters a configuration turns on, in one place (Kong's plugin list).

Each concern lives in its own package and contributes one filter here; `App` sorts
them by priority. Correlation (X-Request-ID) is always on and added by `App` itself.
"""

from __future__ import annotations

from apigate.config.schema import Config
from apigate.gateway.filters import Filter


def build_filters(cfg: Config) -> list[Filter]:
    filters: list[Filter] = []
    if cfg.auth is not None:
        from apigate.auth.filter import AuthFilter  # PyJWT and cryptography load only when used

        filters.append(AuthFilter(cfg))
    if cfg.rate_limiting is not None or any(r.rate_limit for r in cfg.routes):
        from apigate.ratelimit.filter import RateLimitFilter

        filters.append(RateLimitFilter(cfg))
    from apigate.logs.filter import AccessLogFilter, wanted

    if wanted(cfg):
        filters.append(AccessLogFilter(cfg))
    # auth/ (priority 1250), ratelimit/ (910), telemetry/ metrics and logs/ access events
    # (on_complete only) register here as they are configured.
    obs = cfg.observability
    from apigate.telemetry.filter import HealthFilter, MetricsFilter

    if obs.health_checks.liveness_enabled or obs.health_checks.readiness_enabled:
        filters.append(HealthFilter())  # joins only routes whose pattern covers /health/*
    if obs.metrics_enabled:
        filters.append(MetricsFilter())
    if obs.tracing.enabled:
        from apigate.telemetry.tracing import Tracing, TracingFilter  # OpenTelemetry loads only when on

        filters.append(TracingFilter(Tracing(obs.tracing)))
    return filters
