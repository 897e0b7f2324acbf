"""Events: `emit()` for lifecycle and error events, the entry to the log pipeline.

While a pipeline runs in this process (`attach`, done by `Server.start`), `emit` only hands
the event to it (pipeline.py: redaction, sinks, spool). Before that, and in commands that
never start one, `emit` writes the event at once to stdout, redacted, as one JSON line
(or text), and keeps it in a short list that the pipeline, once attached, sends to its
other sinks: so "Configuration loaded", logged before the listener exists, still reaches
the file and Elasticsearch. With several workers only worker 0 takes that list.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

import orjson

from apigate.logs.access import AccessSnapshot
from apigate.logs.record import LEVELS, rfc3339
from apigate.logs.redact import redact


class Pipeline(Protocol):
    """Where events go once a pipeline runs (pipeline.py `Pipeline`): a protocol, so that
    this module, which every package imports, depends on nothing of the pipeline's."""

    def submit(self, event: dict[str, Any]) -> None: ...

    def submit_access(self, snapshot: AccessSnapshot) -> None: ...


EARLY_MAX_EVENTS = 1000
_min_level = 20
_service = "api-gateway"
_text = False
_pipeline: Pipeline | None = None
_early: list[dict[str, Any]] = []


def configure(level: str = "INFO", service: str = "api-gateway", fmt: str = "json") -> None:
    global _min_level, _service, _text
    _min_level = LEVELS.get(level.upper(), 20)
    _service = service
    _text = fmt == "text"


def attach(pipeline: Pipeline, take_early: bool = True) -> None:
    """From now on events go to `pipeline`; it also gets the events emitted before."""
    global _pipeline
    _pipeline = pipeline
    early = list(_early)
    _early.clear()
    if take_early:
        for ev in early:
            ev["_early"] = True  # already written to stdout
            pipeline.submit(ev)


def detach(pipeline: Pipeline) -> None:
    global _pipeline
    if _pipeline is pipeline:
        _pipeline = None


def current() -> Pipeline | None:
    return _pipeline


def timestamp(now: float | None = None) -> str:
    return rfc3339(time.time() if now is None else now)


def emit(level: str, component: str, event_type: str, message: str, **fields: Any) -> None:
    if LEVELS.get(level, 20) < _min_level:
        return
    event: dict[str, Any] = {
        "timestamp": time.time(),
        "level": level,
        "service": _service,
        "component": component,
        "event_type": event_type,
        "message": message,
    }
    event.update(fields)
    p = _pipeline
    if p is not None:
        p.submit(event)
        return
    if len(_early) < EARLY_MAX_EVENTS:
        _early.append(dict(event))
    _write_now(event)


def _write_now(event: dict[str, Any]) -> None:
    event["timestamp"] = timestamp(event["timestamp"])
    event = redact(event)
    if _text:
        extra = " ".join(
            f"{k}={v}"
            for k, v in event.items()
            if k not in ("timestamp", "level", "service", "component", "event_type", "message")
        )
        line = (
            f"{event['timestamp']} {event['level']} {event['component']} {event['message']} {extra}"
        ).rstrip().encode() + b"\n"
    else:
        line = orjson.dumps(event, default=str) + b"\n"
    try:
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass


class Throttle:
    """At most one event per `interval_s`: a failure that repeats on every request (a dead
    Redis, an unreachable store) is logged once per interval, not once per request."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = -interval_s

    def ready(self) -> bool:
        """True (and the interval starts again) when the last event is old enough."""
        now = time.monotonic()
        if now - self.last < self.interval_s:
            return False
        self.last = now
        return True
