"""The table of rate-limit cases that the in-memory store and the Redis script must both
pass (tests/unit/test_ratelimit_algorithms.py, tests/integration/test_ratelimit_redis.py).

Each case replays requests at fixed times (ms after `T0`, a multiple of every window used
here) and states what each one must get: allowed, remaining, reset_ms, retry_ms. The
figures are worked out by hand from the definitions in ratelimit/algorithms.py (and
docs/RATE_LIMITING.md), not produced by running the code.
"""

from __future__ import annotations

from typing import NamedTuple

from apigate.ratelimit.algorithms import Algorithm

T0 = 1_764_000_000_000  # epoch ms, a multiple of 60_000 (so of 1000 too)


class Step(NamedTuple):
    at_ms: int  # after T0
    allowed: bool
    remaining: int
    reset_ms: int
    retry_ms: int


class Case(NamedTuple):
    name: str
    algorithm: Algorithm
    limit: int
    window_ms: int
    steps: list[Step]


CASES = [
    Case(
        "token_bucket: the limit-th passes, the next waits for one token's refill",
        Algorithm.TOKEN_BUCKET,
        3,
        1000,
        [
            Step(0, True, 2, 334, 0),  # 1000 of 3000 units missing, refilled at 3/ms
            Step(0, True, 1, 667, 0),
            Step(0, True, 0, 1000, 0),  # the limit-th
            Step(0, False, 0, 1000, 334),  # the next: a token takes 1000/3 ms
            Step(333, False, 0, 667, 1),  # 999 units: one short
            Step(334, True, 0, 1000, 0),  # 1002 units: a token
            Step(334, False, 0, 1000, 333),
            Step(2000, True, 2, 334, 0),  # refilled to capacity, never beyond
        ],
    ),
    Case(
        "token_bucket: limit 1 per minute",
        Algorithm.TOKEN_BUCKET,
        1,
        60_000,
        [
            Step(0, True, 0, 60_000, 0),
            Step(1, False, 0, 59_999, 59_999),
            Step(59_999, False, 0, 1, 1),
            Step(60_000, True, 0, 60_000, 0),
        ],
    ),
    Case(
        "fixed_window: counts per epoch-aligned window, rolls over at the boundary",
        Algorithm.FIXED_WINDOW,
        2,
        1000,
        [
            Step(0, True, 1, 1000, 0),
            Step(500, True, 0, 500, 0),  # the limit-th
            Step(999, False, 0, 1, 1),  # the next, 1 ms before the rollover
            Step(1000, True, 1, 1000, 0),  # a new window
            Step(1999, True, 0, 1, 0),
            Step(1999, False, 0, 1, 1),
            Step(3500, True, 1, 500, 0),  # windows later: fresh
        ],
    ),
    Case(
        "sliding_window: the previous window weighs by the share still inside",
        Algorithm.SLIDING_WINDOW,
        4,
        1000,
        [
            Step(0, True, 3, 2000, 0),
            Step(100, True, 2, 1900, 0),
            Step(200, True, 1, 1800, 0),
            Step(300, True, 0, 1700, 0),  # the limit-th
            # full: only the next window helps, once 4 x (1000 - e) + 1000 <= 4000, e = 250
            Step(400, False, 0, 1600, 850),
            Step(1249, False, 0, 751, 1),  # 4 x 751 + 1000 > 4000
            Step(1250, True, 0, 1750, 0),  # 4 x 750 + 1000 = 4000
            Step(1500, True, 0, 1500, 0),  # 4 x 500 + 1000 + 1000 = 4000
            Step(1500, False, 0, 1500, 250),  # needs 4 x (500 - d) <= 1000
            Step(3100, True, 3, 1900, 0),  # two windows later: nothing counts
        ],
    ),
    Case(
        "sliding_window: limit 1",
        Algorithm.SLIDING_WINDOW,
        1,
        1000,
        [
            Step(0, True, 0, 2000, 0),
            Step(999, False, 0, 1001, 1001),  # next window, at e = 1000 - 0 = 1000: 2000 - 999
            Step(1999, False, 0, 1, 1),  # previous weighs 1 x 1 ms
            Step(2000, True, 0, 2000, 0),
        ],
    ),
]
