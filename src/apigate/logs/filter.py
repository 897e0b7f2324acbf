"""The access event (`event_type: request_completed`), written in `on_complete`.

Sampling decides first (sampling.py), so a sampled-out request costs a comparison and a
random number. A kept one costs building one dict and appending it to the pipeline's
intake; timestamp formatting, redaction and encoding happen later in the pipeline's pump,
never on the request path. Priority 12, like Kong's http-log: it runs after the other
filters' `on_complete` has recorded what they know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from apigate.config.schema import Config
from apigate.gateway.context import RequestContext
from apigate.gateway.filters import Filter
from apigate.http import clock
from apigate.http.headers import Headers
from apigate.logs import events
from apigate.logs.record import Record, rfc3339
from apigate.logs.redact import redact_text, redact_url
from apigate.logs.sampling import Sampler

if TYPE_CHECKING:
    from apigate.logs.pipeline import Pipeline

USER_AGENT: Final = b"user-agent"
_LEVEL_NAMES: Final = {20: "INFO", 30: "WARN", 40: "ERROR"}


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
        # it into the event (`access_record`) a few milliseconds later, off the request.
        cycle = ctx.cycle
        route = ctx.route
        rl = cycle.response_length
        pipeline.submit_access(
            (
                self,
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


AccessSnapshot = tuple[
    AccessLogFilter, float, float, int, int, str, str, str, bytes, str, Headers, "int | None",
    "str | None", "str | None", "float | None", int, "str | None", "str | None",
]  # fmt: skip


def access_record(snap: AccessSnapshot, wall_offset: float, pipeline: Pipeline) -> Record:
    """The §1.4 access event from `on_complete`'s snapshot, redacted and encoded.

    A fused path for the one event every request produces: the client-supplied strings
    (path with its query, user agent, user, correlation id) are the only ones searched for
    secrets (redact.py's rules); the rest are numbers or names the gateway chose.
    `wall_offset` turns clock.now() time into epoch seconds.
    """
    (f, now, start, levelno, status, rid, method, path, query, client_ip, headers, clen,
     route_id, upstream_id, up, size, user, error) = snap  # fmt: skip
    ts = now + wall_offset
    ua = None
    for name, value in headers:
        if name == USER_AGENT:
            ua = value.decode("latin-1")
            break
    if query:
        path += query.decode("latin-1")
    if pipeline.redaction:
        if "?" in path or "@" in path or "%40" in path:
            path = redact_url(path)
        if ua is not None and ("@" in ua or "earer" in ua or "EARER" in ua):
            ua = redact_text(ua)
        if user is not None and ("@" in user or "earer" in user):
            user = redact_text(user)
        if "@" in rid:
            rid = redact_text(rid)
    eid = pipeline.next_id()
    ev: dict[str, Any] = {
        "timestamp": rfc3339(ts),
        "level": _LEVEL_NAMES[levelno],
        "service": f.service,
        "component": "gateway",
        "event_type": "request_completed",
        "correlation_id": rid,
        "message": "Request completed",
        "method": method,
        "path": path,
        "client_ip": client_ip,
        "user_agent": ua,
        "request_size": clen or 0,
        "status": status,
        "duration_ms": round((now - start) * 1000, 3),
        "route_id": route_id,
        "upstream_id": upstream_id,
        "upstream_duration_ms": round(up * 1000, 3) if up is not None else None,
        "response_size": size,
        "event_id": eid,
    }
    if user is not None:
        ev["user"] = user
    if error is not None:
        ev["error"] = error
    return pipeline.encode(eid, ts, levelno, ev)
