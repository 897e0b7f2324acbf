"""The access event (`event_type: request_completed`), written in `on_complete`.

Sampling decides first (sampling.py), so a sampled-out request costs a comparison and a
random number. A kept one costs building one dict and appending it to the pipeline's
intake; timestamp formatting, redaction and encoding happen later in the pipeline's pump,
never on the request path. Priority 12, like Kong's http-log: it runs after the other
filters' `on_complete` has recorded what they know.
"""

from __future__ import annotations

import time

from apigate.config.schema import Config
from apigate.gateway.context import RequestContext
from apigate.gateway.filters import Filter
from apigate.logs import events
from apigate.logs.redact import AccessEvent
from apigate.logs.sampling import Sampler

USER_AGENT = b"user-agent"
_LEVEL_NAMES = {20: "INFO", 30: "WARN", 40: "ERROR"}


def access_threshold(cfg: Config) -> int:
    """The lowest level at which some enabled sink takes an event (logging.level included)."""
    from apigate.logs.pipeline import LEVELS

    lc = cfg.logging
    sinks = [LEVELS[s.min_level] for s in lc.sinks if s.enabled]
    return max(LEVELS[lc.level], min(sinks)) if sinks else 100


def wanted(cfg: Config) -> bool:
    """Whether access events can reach any sink at all (ERROR is the highest they have)."""
    return access_threshold(cfg) <= 40


class AccessLogFilter(Filter):
    name = "access_log"
    priority = 12

    def __init__(self, cfg: Config) -> None:
        lc = cfg.logging
        self.sampler = Sampler(lc.sampling_rate, lc.log_health_checks)
        self.service = lc.service
        self._time = time.time
        # The lowest level any sink takes: below it, the event would be built for nothing.
        self.threshold = access_threshold(cfg)

    def on_complete(self, ctx: RequestContext) -> None:
        status = ctx.status
        levelno = 40 if status >= 500 else (30 if status >= 400 else 20)
        if levelno < self.threshold or not self.sampler.keep(status, ctx.path):
            return
        pipeline = events.current()
        if pipeline is None:
            return
        cycle = ctx.cycle
        ua = None
        for name, value in cycle.headers:
            if name == USER_AGENT:
                ua = value.decode("latin-1")
                break
        now = self._time()
        route = ctx.route
        query = ctx.query
        up = ctx.upstream_duration
        rl = cycle.response_length
        ev = AccessEvent(
            {
                "timestamp": now,
                "level": _LEVEL_NAMES[levelno],
                "service": self.service,
                "component": "gateway",
                "event_type": "request_completed",
                "correlation_id": ctx.request_id,
                "message": "Request completed",
                "method": ctx.method,
                "path": ctx.path + query.decode("latin-1") if query else ctx.path,
                "client_ip": ctx.client_ip,
                "user_agent": ua,
                "request_size": cycle.content_length or 0,
                "status": status,
                "duration_ms": round((cycle.proto.loop.time() - ctx.start) * 1000, 3),
                "route_id": route.id if route is not None else None,
                "upstream_id": ctx.upstream_id,
                "upstream_duration_ms": round(up * 1000, 3) if up is not None else None,
                "response_size": rl if rl is not None else cycle.body_bytes,
            }
        )
        if ctx.user is not None:
            ev["user"] = ctx.user
        if ctx.error is not None:
            ev["error"] = ctx.error
        pipeline.submit(ev)
