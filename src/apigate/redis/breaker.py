"""The circuit breaker: when round trips keep failing, stop asking Redis.

It opens when round trips have failed without a success in between for `OPEN_AFTER_S`
(and at least `FAILURES_TO_OPEN` of them): a stall shorter than that (a busy host, a slow
command) costs only the requests it delays, not a further probe interval of refusals.
While open, callers answer without Redis (no connect attempt per request against a dead
server); the client probes every `PROBE_INTERVAL_S` and the first success closes it.
"""

from __future__ import annotations

import enum

FAILURES_TO_OPEN = 3  # failed round trips in a row that open the breaker ...
OPEN_AFTER_S = 0.5  # ... once the first of them is this long ago
PROBE_INTERVAL_S = 0.25  # while open: how often Redis is probed


class Breaker(enum.Enum):
    CLOSED = "closed"  # Redis is asked
    OPEN = "open"  # Redis is not asked; a probe runs every PROBE_INTERVAL_S


class CircuitBreaker:
    """The state machine alone (no I/O, no clock of its own): `failed(now)` says when it opens."""

    __slots__ = ("failing_since", "failures", "state")

    def __init__(self) -> None:
        self.state = Breaker.CLOSED
        self.failures = 0  # failed round trips in a row
        self.failing_since = 0.0  # loop time of the first of them

    @property
    def closed(self) -> bool:
        return self.state is Breaker.CLOSED

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, now: float) -> bool:
        """Count a failed round trip; True when this one opens the breaker."""
        self.failures += 1
        if self.failures == 1:
            self.failing_since = now
        if (
            self.state is Breaker.CLOSED
            and self.failures >= FAILURES_TO_OPEN
            and now - self.failing_since >= OPEN_AFTER_S
        ):
            self.state = Breaker.OPEN
            return True
        return False

    def close(self) -> None:
        """A probe succeeded."""
        self.state = Breaker.CLOSED
        self.failures = 0
