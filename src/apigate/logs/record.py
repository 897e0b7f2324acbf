"""One event as the sinks see it: already redacted and encoded once.

`eid` is the event's id, assigned once when the event enters the pipeline and kept in
the spool, so every retry of the same event (also after a restart) carries the same id:
Elasticsearch's `_id`, which is what makes retries idempotent there.
"""

from __future__ import annotations

import time
from typing import Final

# Level names to numbers, for events, sinks' min_level and logging.level (the only copy).
LEVELS: Final = {"DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class Record:
    __slots__ = ("eid", "json", "level", "text", "ts")

    def __init__(self, eid: str, ts: float, level: int, json: bytes, text: bytes | None = None) -> None:
        self.eid = eid
        self.ts = ts  # seconds since the epoch (the event's timestamp)
        self.level = level
        self.json = json  # the event as one JSON object, no newline
        self.text = text  # the text rendering when logging.format is text

    def spool_line(self) -> bytes:
        # json never holds a raw newline or tab outside strings (orjson escapes them).
        return b"%s\t%.3f\t%d\t%s\n" % (self.eid.encode(), self.ts, self.level, self.json)

    @classmethod
    def from_spool_line(cls, line: bytes) -> Record:
        eid, ts, level, json = line.rstrip(b"\n").split(b"\t", 3)
        return cls(eid.decode(), float(ts), int(level), json)

    def __repr__(self) -> str:
        return f"Record({self.eid!r}, {self.ts:.3f})"


_sec_cache: tuple[int, str] = (-1, "")
_ms_cache: tuple[int, str] = (-1, "")


def rfc3339(ts: float) -> str:
    """2024-03-15T12:34:56.789Z. Cached per millisecond and per second: at thousands of
    events a second, most share both with the event before."""
    global _sec_cache, _ms_cache
    ms = int(ts * 1000)
    if ms == _ms_cache[0]:
        return _ms_cache[1]
    sec = ms // 1000
    cached_sec, prefix = _sec_cache
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _sec_cache = (sec, prefix)
    out = f"{prefix}.{ms % 1000:03d}Z"
    _ms_cache = (ms, out)
    return out
