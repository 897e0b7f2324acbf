"""Lifecycle events as one JSON object per line on stdout.

A stand-in for the sink pipeline: the fields follow the guide's §1.4 shape so log
searches written today keep working when the pipeline replaces this writer.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import orjson

LEVELS = {"DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
_min_level = 20
_service = "api-gateway"
_text = False


def configure(level: str = "INFO", service: str = "api-gateway", fmt: str = "json") -> None:
    global _min_level, _service, _text
    _min_level = LEVELS.get(level.upper(), 20)
    _service = service
    _text = fmt == "text"


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def emit(level: str, component: str, event_type: str, message: str, **fields: Any) -> None:
    if LEVELS.get(level, 20) < _min_level:
        return
    event: dict[str, Any] = {
        "timestamp": _timestamp(),
        "level": level,
        "service": _service,
        "component": component,
        "event_type": event_type,
        "message": message,
        "pid": os.getpid(),
    }
    event.update(fields)
    if _text:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{event['timestamp']} {level} {component} {message} {extra}".rstrip().encode() + b"\n"
    else:
        line = orjson.dumps(event) + b"\n"
    try:
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass
