"""The limit algorithms in memory: the shared table of cases, and expiry equivalence."""

from __future__ import annotations

import random

import pytest
from ratelimit_cases import CASES, T0, Case

from apigate.ratelimit.algorithms import ALGORITHMS, Algorithm, check, check_units
from apigate.ratelimit.memory import MemoryStore


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_memory_store_passes_the_shared_table(case: Case) -> None:
    store = MemoryStore()
    for step in case.steps:
        got = store.check(b"k", case.algorithm, case.limit, case.window_ms, now=T0 + step.at_ms)
        want = (step.allowed, step.remaining, step.reset_ms, step.retry_ms)
        assert got == want, f"at +{step.at_ms} ms"


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_an_expired_state_answers_like_the_stored_one(algorithm: Algorithm) -> None:
    """What lets every Redis key carry a TTL: once it has passed, 'missing' is equivalent."""
    rng = random.Random(int(algorithm))
    for _ in range(200):
        limit, window = rng.randint(1, 5), rng.choice([7, 100, 1000])
        state = None
        now = T0
        for _ in range(rng.randint(1, 12)):
            now += rng.randint(0, window)
            out = check(algorithm, state, now, limit, window)
            if out[4] is not None:
                state, ttl, written = out[4], out[5], now
        if state is None:
            continue
        later = written + ttl + rng.randint(0, 3 * window)
        assert check(algorithm, state, later, limit, window) == check(algorithm, None, later, limit, window)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_never_more_than_limit_in_one_burst(algorithm: Algorithm) -> None:
    store = MemoryStore()
    allowed = sum(store.check(b"k", algorithm, 10, 60_000, now=T0 + 5)[0] for _ in range(50))
    assert allowed == 10


def test_fixed_and_token_bucket_allow_exactly_limit_over_a_long_window() -> None:
    store = MemoryStore()
    for name in ("fixed_window", "token_bucket"):
        alg = ALGORITHMS[name]
        got = sum(store.check(name.encode(), alg, 37, 3_600_000, now=T0 + i)[0] for i in range(1000))
        assert got == 37, name


def test_sliding_window_worst_case_stays_below_twice_the_limit() -> None:
    """The documented bound: all of the previous window's requests at its very end."""
    store, limit, window = MemoryStore(), 10, 1000
    times = [T0 + 999] * 20 + [T0 + 1000 + t for t in range(0, 1000, 5)]
    accepted = [t for t in times if store.check(b"k", Algorithm.SLIDING_WINDOW, limit, window, now=t)[0]]
    worst = max(sum(1 for t in accepted if end - window < t <= end) for end in accepted)
    assert limit < worst < 2 * limit


def test_memory_store_forgets_expired_keys() -> None:
    store = MemoryStore()
    for i in range(100):
        store.check(b"k%d" % i, Algorithm.FIXED_WINDOW, 1, 1000, now=T0)
    assert len(store) == 100
    store.check(b"other", Algorithm.FIXED_WINDOW, 1, 1000, now=T0 + 60_000)
    assert len(store) == 1


def test_units_that_leave_the_exact_range_are_refused() -> None:
    check_units(10**6, 86_400_000)
    with pytest.raises(ValueError):
        check_units(10**9, 86_400_000)
