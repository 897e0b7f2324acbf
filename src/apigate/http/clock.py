"""The clock of request timing: `ctx.start`, request and upstream durations.

CLOCK_MONOTONIC, the same clock as the event loop's (deadlines and timers compare the two),
but to the nanosecond: uvloop's `loop.time()` is cut to whole milliseconds, which made
every fast request 0 or 1 ms in the access log, the latency histograms and the spans.
"""

from time import monotonic as now

__all__ = ["now"]
