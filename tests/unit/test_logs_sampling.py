"""Sampling (guide §1.6): errors and auth failures always, health checks off, 2xx/3xx at a rate."""

from __future__ import annotations

import math
import random

from apigate.logs.sampling import Sampler


def test_errors_and_auth_failures_always() -> None:
    s = Sampler(0.0, False)
    assert all(s.keep(st, "/api") for st in (400, 401, 403, 404, 429, 500, 502, 503, 504))
    assert s.keep(200, "/api", auth_failed=True)
    assert s.keep(503, "/health/ready")


def test_health_checks_skipped_unless_asked() -> None:
    assert not Sampler(1.0, False).keep(200, "/health/live")
    assert not Sampler(1.0, False).keep(200, "/health")
    assert Sampler(1.0, False).keep(200, "/healthy-things")
    assert Sampler(1.0, True).keep(200, "/health/live")


def test_rate_zero_and_one() -> None:
    assert not any(Sampler(0.0, False).keep(200, "/a") for _ in range(1000))
    assert all(Sampler(1.0, False).keep(302, "/a") for _ in range(1000))


def test_rate_is_statistically_right() -> None:
    random.seed(12345)
    n, p = 100_000, 0.1
    kept = sum(Sampler(p, False).keep(200, "/api") for _ in range(n))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * p) < 5 * sigma, (kept, n * p, sigma)
