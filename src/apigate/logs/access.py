"""The access event: the snapshot `on_complete` takes, and the record the pump builds.

The filter (filter.py) and the pipeline (pipeline.py) both use this module and neither
imports the other: the request path only appends a tuple (`AccessSnapshot`) to the
pipeline's intake; the pump turns it into the §1.4 event (`access_event`), off the
request path.
"""

from __future__ import annotations

from typing import Any, Final

from apigate.http.headers import Headers
from apigate.logs.record import rfc3339
from apigate.logs.redact import redact_text, redact_url

USER_AGENT: Final = b"user-agent"
_LEVEL_NAMES: Final = {20: "INFO", 30: "WARN", 40: "ERROR"}


AccessSnapshot = tuple[
    str, float, float, int, int, str, str, str, bytes, str, Headers, "int | None",
    "str | None", "str | None", "float | None", int, "str | None", "str | None",
]  # fmt: skip


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond. (round(x, 3) goes through a decimal string: a third
    of this event's cost in float formatting, callgrind says.)"""
    return int(seconds * 1_000_000 + 0.5) / 1000


def access_event(snap: AccessSnapshot, wall_offset: float, redaction: bool, eid: str) -> dict[str, Any]:
    """The §1.4 access event from `on_complete`'s snapshot, redacted (the pipeline encodes it:
    `Pipeline.access_record`).

    A fused path for the one event every request produces: the client-supplied strings
    (path with its query, user agent, user, correlation id) are the only ones searched for
    secrets (redact.py's rules); the rest are numbers or names the gateway chose.
    `wall_offset` turns clock.now() time into epoch seconds.
    """
    (service, now, start, levelno, status, rid, method, path, query, client_ip, headers, clen,
     route_id, upstream_id, up, size, user, error) = snap  # fmt: skip
    ts = now + wall_offset
    ua = None
    for name, value in headers:
        if name == USER_AGENT:
            ua = value.decode("latin-1")
            break
    if query:
        path += query.decode("latin-1")
    if redaction:
        if "?" in path or "@" in path or "%40" in path:
            path = redact_url(path)
        if ua is not None and ("@" in ua or "earer" in ua or "EARER" in ua):
            ua = redact_text(ua)
        if user is not None and ("@" in user or "earer" in user):
            user = redact_text(user)
        if "@" in rid:
            rid = redact_text(rid)
    ev: dict[str, Any] = {
        "timestamp": rfc3339(ts),
        "level": _LEVEL_NAMES[levelno],
        "service": service,
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
        "duration_ms": _ms(now - start),
        "route_id": route_id,
        "upstream_id": upstream_id,
        "upstream_duration_ms": _ms(up) if up is not None else None,
        "response_size": size,
        "event_id": eid,
    }
    if user is not None:
        ev["user"] = user
    if error is not None:
        ev["error"] = error
    return ev
