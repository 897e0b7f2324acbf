"""The three limit algorithms as pure functions on integers: state in, decision out.

Why pure and integer-only: the in-memory store runs these functions and the Redis Lua
script (`redis.py`) is a line-by-line transcription of them, so the same state and the
same clock give the same answer in both (tests/unit/test_ratelimit_algorithms.py and the
Redis integration test replay one shared table of cases through both). Lua numbers are
doubles, exact for integers below 2**53; every quantity here is an integer of at most
`limit * window_ms * 2`, which the config keeps below 2**50 (`MAX_UNITS`). Time is an
integer of milliseconds; in Redis it is read from `TIME` inside the script.

State is a tuple of ints stored as a Redis hash (fields a, b, c) or in a dict in memory.
A missing state means "nothing counted": each algorithm picks its expiry so that, once
the key has expired, the missing state gives the same answer the stored one would have
(a full bucket, an empty window), which is why every key can carry a TTL.

- token_bucket: capacity `limit`, refilled continuously at `limit` per window. Tokens are
  counted in units of 1/window_ms token, so one request costs `window_ms` units and one
  millisecond refills `limit` units: integer arithmetic, no rounding drift.
  State (level, last_ms). TTL: time until the bucket is full again.
- fixed_window: windows aligned to the epoch (`now // window_ms`), so every instance
  agrees on the boundaries. State (window index, count). TTL: until the window ends.
- sliding_window: the weighted two-window estimate (Cloudflare's): the previous window's
  count weighted by the share of it still inside the rolling window, plus the current
  count. O(1) memory per key. It is an estimate: it assumes the previous window's
  requests were spread evenly. Worst case (all of them at its very end), a rolling
  window can hold up to 2*limit - 1 accepted requests; with evenly spread traffic the
  error is 0. docs/RATE_LIMITING.md has the derivation. State (window index, current,
  previous). TTL: until both counts have aged out (two windows).

A rejected request changes no state (so a client hammering a closed limit does not push
its own reset further away), and a refill or rollover never needs to be written back:
recomputing it from the stored state later gives the same value.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum

MAX_UNITS = 2**50  # limit * window_ms must stay below this (Lua doubles are exact to 2**53)
LEASE_MS = 250  # token-bucket lease epochs (token_bucket_lease): a lease is counted 250-500 ms


class Algorithm(IntEnum):
    """Wire codes shared with the Lua script (ARGV[1])."""

    TOKEN_BUCKET = 1
    FIXED_WINDOW = 2
    SLIDING_WINDOW = 3


ALGORITHMS = {
    "token_bucket": Algorithm.TOKEN_BUCKET,
    "fixed_window": Algorithm.FIXED_WINDOW,
    "sliding_window": Algorithm.SLIDING_WINDOW,
}
SHORT_NAMES = {Algorithm.TOKEN_BUCKET: "tb", Algorithm.FIXED_WINDOW: "fw", Algorithm.SLIDING_WINDOW: "sw"}

State = tuple[int, ...]


# What a check answers, as plain tuples: they are built on every request, and a NamedTuple
# costs a Python-level call each time.
#   Decision: (allowed, remaining, reset_ms, retry_ms)
#     remaining: requests still allowed right now; reset_ms: until the limit is fully
#     available again; retry_ms: rejected, until a request would be accepted (else 0).
#   Outcome: Decision's four fields, then (state to store or None, its ttl_ms).
Decision = tuple[bool, int, int, int]
Outcome = tuple[bool, int, int, int, State | None, int]
#   LeaseOutcome (token bucket): Decision's four fields, then (tokens granted, lease epoch,
#     ms the lease is counted), then Outcome's last two.
LeaseOutcome = tuple[bool, int, int, int, int, int, int, State | None, int]
CheckFn = Callable[[State | None, int, int, int], Outcome]


def window_ms(window_secs: float) -> int:
    return max(1, round(window_secs * 1000))


def check_units(limit: int, window: int) -> None:
    """Raise ValueError when limit x window would leave the exact-integer range of Lua."""
    if limit * window * 2 >= MAX_UNITS:
        raise ValueError(f"limit x window_ms = {limit * window} is too large (must stay below 2**49)")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def token_bucket(state: State | None, now: int, limit: int, window: int) -> Outcome:
    allowed, remaining, reset, retry, _, _, _, new_state, ttl = token_bucket_lease(state, now, limit, window)
    return allowed, remaining, reset, retry, new_state, ttl


def token_bucket_lease(
    state: State | None, now: int, limit: int, window: int, want: int = 0, ret_epoch: int = -1, ret: int = 0
) -> LeaseOutcome:
    """The token bucket, and its leases (docs/RATE_LIMITING.md, "Leases").

    An instance may take `want` tokens besides the request's own, to spend locally, when the
    bucket stays at least half full after them; it gives back `ret` unspent tokens of a lease
    of epoch `ret_epoch`. Leased tokens are counted in `cur` (granted this lease epoch) and
    `prev` (the epoch before) until the end of the epoch after their own, when they are
    taken as spent; while counted, they lower the bucket's ceiling, so that the bucket plus
    every token held anywhere never exceeds the capacity: no instance, with or without
    leases, ever admits a request an exact token bucket would refuse. The refill is computed
    under that ceiling as it was at each epoch boundary since the last write (`r1`, `r2`),
    not as it is now, which would refill past a ceiling that held meanwhile.
    """
    capacity = limit * window
    epoch = now // LEASE_MS
    if state is None:
        level, cur, prev = capacity, 0, 0
    else:
        level, last = state[0], state[1]
        e, cur, prev = (state[2], state[3], state[4]) if len(state) == 5 else (epoch, 0, 0)
        if e > epoch:  # a clock stepped back: keep counting the leases as of their own epoch
            epoch = e
        if now > last:
            level += (now - last) * limit
            r1 = (e + 1) * LEASE_MS  # the first boundary after the last write: prev is released
            if r1 <= now:
                level = min(level, capacity - cur - prev + (now - r1) * limit)
                if r1 + LEASE_MS <= now:  # the second: cur is released too
                    level = min(level, capacity - cur + (now - r1 - LEASE_MS) * limit)
        if e == epoch - 1:
            cur, prev = 0, cur
        elif e != epoch:
            cur = prev = 0
    if ret > 0:  # unspent tokens back, while their epoch still counts them
        units = ret * window
        if ret_epoch == epoch:
            units = min(units, cur)
            cur -= units
        elif ret_epoch == epoch - 1:
            units = min(units, prev)
            prev -= units
        else:
            units = 0
        level += units
    level = min(level, capacity - cur - prev)
    valid = (epoch + 2) * LEASE_MS - now  # how long a lease granted now is counted
    allowed = level >= window
    granted = retry = 0
    if allowed:
        level -= window
        if want > 0:
            spare = (level - capacity // 2) // window
            if spare > 0:
                granted = min(want, spare)
                level -= granted * window
                cur += granted * window
    else:
        retry = -((level - window) // limit)
    reset = -((level - capacity) // limit)  # ceil((capacity - level) / limit)
    if not allowed and ret == 0:  # a refusal stores nothing (tokens given back are stored)
        return False, 0, reset, retry, 0, epoch, valid, None, 0
    ttl = max(reset, valid) if cur or prev else reset
    return allowed, level // window, reset, retry, granted, epoch, valid, (level, now, epoch, cur, prev), ttl


def fixed_window(state: State | None, now: int, limit: int, window: int) -> Outcome:
    index = now // window
    count = state[1] if state is not None and state[0] == index else 0
    reset = (index + 1) * window - now
    if count < limit:
        count += 1
        return True, limit - count, reset, 0, (index, count), reset
    return False, 0, reset, reset, None, 0


def sliding_window(state: State | None, now: int, limit: int, window: int) -> Outcome:
    index = now // window
    elapsed = now - index * window
    current = previous = 0
    if state is not None:
        if state[0] == index:
            current, previous = state[1], state[2]
        elif state[0] == index - 1:
            previous = state[1]
    budget = limit * window
    weighted = previous * (window - elapsed) + current * window
    if weighted + window <= budget:
        current += 1
        weighted += window
        ttl = 2 * window - elapsed
        return True, (budget - weighted) // window, ttl, 0, (index, current, previous), ttl
    reset = 2 * window - elapsed if current > 0 else window - elapsed
    if current < limit:
        # Later in this window the previous count weighs less: the first d with
        # previous * (window - elapsed - d) <= (limit - current - 1) * window.
        retry = (window - elapsed) - ((limit - current - 1) * window) // previous
    else:
        # Only the next window helps, where this window's count becomes the previous one.
        retry = (window - elapsed) + window - ((limit - 1) * window) // current
    return False, 0, reset, retry, None, 0


CHECKS: dict[Algorithm, CheckFn] = {
    Algorithm.TOKEN_BUCKET: token_bucket,
    Algorithm.FIXED_WINDOW: fixed_window,
    Algorithm.SLIDING_WINDOW: sliding_window,
}


def check(algorithm: Algorithm, state: State | None, now: int, limit: int, window: int) -> Outcome:
    return CHECKS[algorithm](state, now, limit, window)
