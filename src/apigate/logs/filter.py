"""The access event (`event_type: request_completed`), written in `on_complete`.

Sampling decides first (sampling.py), so a sampled-out request costs a comparison and a
random number. A kept one costs building one tuple and appending it to the pipeline's
intake; timestamp formatting, redaction and encoding happen later in the pipeline's pump
(access.py), never on the request path. Priority 12, like Kong's http-log: it runs after the other
filters' `on_complete` has recorded what they know.
"""

from __future__ import annotations

from apigate.config.schema import Config
from apigate.gateway.filters import Filter, RequestContext
from apigate.http import clock
from apigate.logs import events
from apigate.logs.record import LEVELS
from apigate.logs.sampling import Sampler


def access_threshold(cfg: Config) -> int:
    """The lowest level at which some enabled sink takes an event (logging.level included)."""
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
        # The request path only takes a snapshot of the values (a tuple); the pump turns
        # it into the event (`access_event`) a few milliseconds later, off the request.
        cycle = ctx.cycle
        route = ctx.route
        rl = cycle.response_length
        pipeline.submit_access(
            (
                self.service,
                clock.now(),
                ctx.start,
                levelno,
                status,
                ctx.request_id,
                ctx.method,
                ctx.path,
                ctx.query,
                ctx.client_ip,
                cycle.headers,
                cycle.content_length,
                route.id if route is not None else None,
                ctx.upstream_id,
                ctx.upstream_duration,
                rl if rl is not None else cycle.body_bytes,
                ctx.user,
                ctx.error,
            )
        )
