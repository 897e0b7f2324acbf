"""One event as the sinks see it: already redacted and encoded once.

`eid` is the event's id, assigned once when the event enters the pipeline and kept in
the spool, so every retry of the same event (also after a restart) carries the same id:
Elasticsearch's `_id`, which is what makes retries idempotent there.
"""

from __future__ import annotations


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
