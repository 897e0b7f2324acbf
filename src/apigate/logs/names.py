"""The log pipeline's drop reasons and per-sink counters (its metric names are in telemetry/names.py).

The telemetry exporter reads `Pipeline.samples()` (pipeline.py), which yields these
names with their labels; nothing else in the package spells a metric name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Reasons of log_events_dropped_total.
DROP_QUEUE_FULL = "queue_full"  # the in-memory queue was full and no spool took the event
DROP_SPOOL_FULL = "spool_full"  # spool_max_mb reached: the oldest spooled events were dropped
DROP_REJECTED = "rejected"  # the backend refused the event for good (mapping error, bad data)
DROP_SHUTDOWN = "shutdown"  # still unsent at exit with no spool to keep it


@dataclass
class SinkStats:
    """Counters of one sink; plain ints, bumped on the event loop only."""

    events: int = 0
    errors: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
