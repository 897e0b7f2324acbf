"""The log pipeline of one process: intake → redact → encode once → each sink's queue.

The request path (`submit`) only appends the raw event dict to a bounded deque; a pump
task on the same loop does the rest in batches every few milliseconds, so redaction and
JSON encoding are off the request's latency. Then each sink (sinks/base.py) batches,
retries and spools on its own.

Timestamps travel as floats and are formatted here (RFC 3339, UTC, milliseconds, Z).
Every event gets an `event_id` (a per-process random prefix and a counter): the id the
sinks deduplicate on, kept through the spool and across retries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from apigate.config.schema import LoggingConfig, SinkConfig
from apigate.http import clock
from apigate.logs import names
from apigate.logs.access import AccessSnapshot, access_event
from apigate.logs.record import LEVELS, Record, rfc3339
from apigate.logs.redact import redact
from apigate.logs.sinks.base import Sink
from apigate.telemetry import names as metric_names

INTAKE_MAX_EVENTS = 50_000
PUMP_INTERVAL_S = 0.02
PUMP_BATCH = 2048
PUMP_SLICE = 128  # events per turn of the loop: ~1 ms of work, then requests go first
PIPELINE = "pipeline"  # the sink label of drops before any sink (intake full)


def text_line(event: dict[str, Any]) -> bytes:
    skip = ("timestamp", "level", "component", "message", "service", "event_type")
    extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip and v is not None)
    return (
        f"{event.get('timestamp')} {event.get('level')} {event.get('component')} "
        f"{event.get('message')} {extra}".rstrip().encode()
    )


BASE_FIELDS = (
    "timestamp",
    "level",
    "service",
    "component",
    "event_type",
    "correlation_id",
    "message",
    "event_id",
)


def flatten(event: dict[str, Any]) -> dict[str, Any]:
    """`structured: false`: only the base fields; the others are appended to the message as
    key=value, for backends that index a message rather than fields."""
    out = {k: event[k] for k in BASE_FIELDS if k in event}
    extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in out and v is not None)
    if extra:
        out["message"] = f"{out.get('message', '')} {extra}".strip()
    return out


class Pipeline:
    def __init__(
        self,
        service: str = "api-gateway",
        level: str = "INFO",
        redaction: bool = True,
        text: bool = False,
        sinks: list[Sink] | None = None,
        structured: bool = True,
    ) -> None:
        self.service = service
        self.min_level = LEVELS.get(level.upper(), 20)
        self.redaction = redaction
        self.text = text
        self.structured = structured
        self.sinks: list[Sink] = sinks or []
        self.intake: collections.deque[dict[str, Any] | AccessSnapshot] = collections.deque()
        self.intake_dropped = 0
        self._id_prefix = secrets.token_hex(6) + "-"
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: LoggingConfig, worker: int | None = None) -> Pipeline:
        from apigate.logs import sinks as _  # noqa: F401  (package docstring)

        text = cfg.format == "text"
        p = cls(cfg.service, cfg.level, cfg.redaction_enabled, text, structured=cfg.structured)
        used: dict[str, int] = {}
        for sc in cfg.sinks:
            if not sc.enabled:
                continue
            n = used.get(sc.type, 0)
            used[sc.type] = n + 1
            name = sc.type if n == 0 else f"{sc.type}-{n + 1}"
            sink = build_sink(sc, name, text, worker)
            if sink.uses_spool:
                suffix = "" if worker is None else f".w{worker}"
                try:
                    sink.attach_spool(
                        Path(cfg.spool_dir) / (name + suffix), int(cfg.spool_max_mb * 1024 * 1024)
                    )
                except OSError as e:
                    p._warn_no_spool(name, cfg.spool_dir, e)
            p.sinks.append(sink)
        for s in p.sinks:
            s.on_state_change.append(p._sink_state)
        return p

    def _warn_no_spool(self, sink: str, directory: str, err: OSError) -> None:
        self.submit(
            self.event(
                "WARN",
                "logs",
                "spool_unavailable",
                "Log spool unavailable; events of a down sink are kept in memory only",
                sink=sink,
                spool_dir=directory,
                error=str(err),
            )
        )

    def _sink_state(self, sink: Sink, down: bool) -> None:
        if down:
            self.submit(self.event("ERROR", "logs", "sink_down", "Log sink down", sink=sink.name))
        else:
            self.submit(self.event("INFO", "logs", "sink_recovered", "Log sink recovered", sink=sink.name))

    def event(
        self, level: str, component: str, event_type: str, message: str, **fields: Any
    ) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "timestamp": time.time(),
            "level": level,
            "service": self.service,
            "component": component,
            "event_type": event_type,
            "message": message,
        }
        ev.update(fields)
        return ev

    # ------------------------------------------------------------------ the request path
    def submit(self, event: dict[str, Any]) -> None:
        """Never blocks, never raises: the event waits in a bounded deque for the pump."""
        q = self.intake
        if len(q) >= INTAKE_MAX_EVENTS:
            q.popleft()
            self.intake_dropped += 1
        q.append(event)

    def submit_access(self, snapshot: AccessSnapshot) -> None:
        """The access filter's snapshot; the pump builds the event (logs/access.py)."""
        q = self.intake
        if len(q) >= INTAKE_MAX_EVENTS:
            q.popleft()
            self.intake_dropped += 1
        q.append(snapshot)

    # ------------------------------------------------------------------ the pump
    def process(self, event: dict[str, Any]) -> Record | None:
        level = LEVELS.get(event.get("level", "INFO"), 20)
        if level < self.min_level:
            return None
        ts = event.get("timestamp")
        if not isinstance(ts, float):
            ts = time.time()
        eid = self.next_id()
        ev = event  # the pipeline owns submitted events: no copy
        ev["timestamp"] = rfc3339(ts)
        ev.setdefault("service", self.service)
        ev["event_id"] = eid
        if self.redaction:
            ev = redact(ev)
        return self.encode(eid, ts, level, ev)

    def next_id(self) -> str:
        self._seq += 1
        return self._id_prefix + hex(self._seq)  # "<12 hex digits>-0x1f" (hex() is the cheap one)

    def encode(self, eid: str, ts: float, level: int, ev: dict[str, Any]) -> Record:
        """The redacted event as a Record: JSON once (and the text line when asked)."""
        if not self.structured:
            ev = flatten(ev)
        try:
            data = orjson.dumps(ev, default=str)
        except TypeError:
            data = orjson.dumps({k: str(v) for k, v in ev.items()})
        return Record(eid, ts, level, data, text_line(ev) if self.text else None)

    def access_record(self, snap: AccessSnapshot, wall_offset: float) -> Record:
        """An access snapshot as its encoded event (logs/access.py builds the event)."""
        eid = self.next_id()
        ev = access_event(snap, wall_offset, self.redaction, eid)
        return self.encode(eid, snap[1] + wall_offset, snap[3], ev)

    def pump(self, most: int = PUMP_BATCH * 8) -> int:
        """Move what the intake holds (up to `most` events) to the sinks; returns how many
        events were taken."""
        q = self.intake
        n = 0
        sinks = self.sinks
        wall_offset = time.time() - clock.now() if q else 0.0  # access snapshots carry clock.now()
        while q and n < most:
            item = q.popleft()
            n += 1
            early = False
            try:
                if type(item) is tuple:
                    rec: Record | None = self.access_record(item, wall_offset)
                else:
                    early = item.pop("_early", False)  # type: ignore[union-attr]  # already on stdout
                    rec = self.process(item)  # type: ignore[arg-type]
            except Exception:
                continue
            if rec is None:
                continue
            for s in sinks:
                if rec.level >= s.min_level and not (early and s.kind == "stdout"):
                    s.offer(rec)
        return n

    async def _run(self) -> None:
        while True:
            # A quarter of the backlog, at least a slice: the intake drains at any arrival rate.
            self.pump(max(PUMP_SLICE, len(self.intake) >> 2))
            if self._stopping and not self.intake:
                return
            # More waiting: the next slice after the requests that are ready (a whole
            # interval's events at once would stall them by milliseconds: the tail latency).
            await asyncio.sleep(0 if self.intake else PUMP_INTERVAL_S)

    async def start(self) -> None:
        for s in self.sinks:
            s.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="log-pipeline")

    async def close(self, timeout: float) -> None:
        """Flush every sink within `timeout` (what is left goes to the spools)."""
        self._stopping = True
        self.pump()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.pump()
        await asyncio.gather(*(s.close(timeout) for s in self.sinks), return_exceptions=True)

    # ------------------------------------------------------------------ metrics
    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """(metric name, labels, value) for every log metric; names.py has the names."""
        if self.intake_dropped:
            yield (
                metric_names.LOG_EVENTS_DROPPED_TOTAL,
                {"sink": PIPELINE, "reason": names.DROP_QUEUE_FULL},
                float(self.intake_dropped),
            )
        for s in self.sinks:
            label = {"sink": s.name}
            yield metric_names.LOG_EVENTS_TOTAL, label, float(s.stats.events)
            yield metric_names.LOG_SINK_ERRORS_TOTAL, label, float(s.stats.errors)
            yield metric_names.LOG_SINK_QUEUE_DEPTH, label, float(s.queue_depth)
            yield metric_names.LOG_SPOOL_BYTES, label, float(s.spool_bytes)
            for reason, n in sorted(s.stats.dropped.items()):
                yield metric_names.LOG_EVENTS_DROPPED_TOTAL, {"sink": s.name, "reason": reason}, float(n)


def build_sink(sc: SinkConfig, name: str, text: bool, worker: int | None) -> Sink:
    level = LEVELS.get(sc.min_level, 20)
    if sc.type == "stdout":
        from apigate.logs.sinks.stdout import StdoutSink

        return StdoutSink(name, level, text)
    if sc.type == "file":
        from apigate.logs.sinks.file import FileSink

        f = sc.file
        assert f is not None
        path = Path(f.path if worker is None else f"{f.path}.{worker}")
        return FileSink(
            name,
            level,
            path,
            text,
            f.rotation_enabled,
            f.max_size_mb,
            f.max_backups,
            f.max_age_days,
            f.compress,
        )
    if sc.type == "elasticsearch":
        from apigate.logs.sinks.elasticsearch import ElasticsearchSink

        assert sc.elasticsearch is not None
        return ElasticsearchSink(name, level, sc.elasticsearch)
    if sc.type == "splunk":
        from apigate.logs.sinks.splunk import SplunkSink

        assert sc.splunk is not None
        return SplunkSink(name, level, sc.splunk)
    from apigate.logs.sinks.cloudwatch import CloudWatchSink

    assert sc.cloudwatch is not None
    return CloudWatchSink(name, level, sc.cloudwatch, worker)


def worker_index() -> int | None:
    """The index of this worker process (server.workers > 1), or None for a single process."""
    v = os.environ.get("APIGATE_WORKER_INDEX")
    return int(v) if v and v.isdigit() else None
