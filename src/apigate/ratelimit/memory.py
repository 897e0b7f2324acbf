"""The in-process limit store: `algorithms` on a dict, answered synchronously.

Used when no Redis is configured, and as the fail_open fallback while Redis is
unreachable (per-instance limits: degraded, never unlimited). A check never awaits, so a
request limited in memory creates no task (gateway/filters.py explains why that matters).

Entries carry the same expiry the Redis keys get, and an expired entry reads as missing,
exactly as an expired Redis key does. Expired entries are swept at most every
`SWEEP_INTERVAL_MS` in one pass, so memory stays bounded by the keys active in roughly
the longest window.
"""

from __future__ import annotations

import time

from apigate.ratelimit.algorithms import CHECKS, Algorithm, Decision, State

SWEEP_INTERVAL_MS = 10_000


def wall_ms() -> int:
    """Epoch milliseconds: fixed windows are aligned to the epoch, as in Redis."""
    return time.time_ns() // 1_000_000


class MemoryStore:
    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[State, int]] = {}  # key -> (state, expires_at_ms)
        self._next_sweep = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<MemoryStore keys={len(self._entries)}>"

    def check(
        self, key: bytes, algorithm: Algorithm, limit: int, window: int, now: int | None = None
    ) -> Decision:
        if now is None:
            now = time.time_ns() // 1_000_000
        if now >= self._next_sweep:
            self._sweep(now)
        entry = self._entries.get(key)
        state = entry[0] if entry is not None and entry[1] > now else None
        allowed, remaining, reset, retry, new_state, ttl = CHECKS[algorithm](state, now, limit, window)
        if new_state is not None:
            self._entries[key] = (new_state, now + ttl)
        return allowed, remaining, reset, retry

    def _sweep(self, now: int) -> None:
        self._next_sweep = now + SWEEP_INTERVAL_MS
        expired = [k for k, (_, expires) in self._entries.items() if expires <= now]
        for k in expired:
            del self._entries[k]

    def clear(self) -> None:
        self._entries.clear()
