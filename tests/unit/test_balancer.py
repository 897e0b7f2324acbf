"""gateway/balancer.py without I/O: the pick order, the breaker's state machine, the
retry budget, and the configuration that builds them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import ValidationError

from apigate.config.schema import Config, UpstreamConfig
from apigate.gateway.balancer import CircuitState, Target, UpstreamGroup, build_upstreams, target_name


def in_loop(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Pools need a running loop to be built."""

    def run() -> None:
        asyncio.run(fn())  # type: ignore[arg-type]

    run.__name__ = fn.__name__
    return run


def group_of(**upstream: Any) -> UpstreamGroup:
    cfg = UpstreamConfig.model_validate({"id": "svc", **upstream})
    _, groups, _ = build_upstreams([cfg])
    return groups["svc"]


def names(group: UpstreamGroup, n: int) -> str:
    by_pool = {t.pool: t.url[-1] for t in group.targets}
    out = ""
    for _ in range(n):
        pool = group.pick()
        assert pool is not None
        out += by_pool[pool]
    return out


@in_loop
async def test_smooth_weighted_round_robin_interleaves_like_nginx() -> None:
    g = group_of(
        targets=[
            {"url": "http://127.0.0.1:1/a", "weight": 5},
            {"url": "http://127.0.0.1:1/b"},
            {"url": "http://127.0.0.1:1/c"},
        ]
    )
    assert names(g, 14) == "aabacaa" * 2


@in_loop
async def test_least_requests_prefers_the_less_loaded_target_by_weight() -> None:
    g = group_of(
        targets=[{"url": "http://127.0.0.1:1/a", "weight": 2}, {"url": "http://127.0.0.1:1/b"}],
        load_balancing="least_requests",
    )
    a, b = g.targets
    a.pool.active = 3  # 3/2 = 1.5 per weight
    b.pool.active = 1
    assert names(g, 3) == "bbb"
    b.pool.active = 2  # 2/1 = 2 per weight: a is less loaded now
    assert names(g, 1) == "a"


def breaker_target(**breaker: Any) -> Target:
    cfg = UpstreamConfig.model_validate(
        {"id": "svc", "base_url": "http://127.0.0.1:1", "circuit_breaker": breaker}
    )
    return Target("svc", "http://127.0.0.1:1", 1, None, cfg)  # type: ignore[arg-type]  # no pool needed


def test_breaker_opens_after_consecutive_failures_only() -> None:
    t = breaker_target(failure_threshold=3, open_secs=10)
    t.failed("connect", 100.0)
    t.failed("connect", 100.0)
    t.succeeded()  # the count starts again
    t.failed("reset", 100.0)
    t.failed("reset", 100.0)
    assert t.circuit(100.0) == CircuitState.CLOSED and t.available(100.0)
    t.failed("timeout", 100.0)
    assert t.circuit(100.0) == CircuitState.OPEN
    assert not t.available(109.9)


def test_half_open_lets_trials_through_and_closes_when_they_all_succeed() -> None:
    t = breaker_target(failure_threshold=1, open_secs=10, half_open_requests=2)
    t.failed("connect", 0.0)
    assert t.available(10.0) and t.state == CircuitState.HALF_OPEN
    t.picked()
    t.picked()
    assert not t.available(10.0), "no more than half_open_requests trials"
    t.succeeded()
    assert t.state == CircuitState.HALF_OPEN
    t.succeeded()
    assert t.state == CircuitState.CLOSED and t.available(10.0)


def test_a_failed_trial_opens_the_circuit_again() -> None:
    t = breaker_target(failure_threshold=1, open_secs=10)
    t.failed("connect", 0.0)
    assert t.circuit(10.0) == CircuitState.HALF_OPEN
    t.picked()
    t.failed("connect", 10.0)
    assert t.circuit(19.0) == CircuitState.OPEN
    assert t.circuit(20.0) == CircuitState.HALF_OPEN


def test_active_checks_take_a_target_out_and_bring_it_back_by_threshold() -> None:
    t = breaker_target()
    for _ in range(2):
        t.checked(False, "refused", healthy_threshold=2, unhealthy_threshold=3)
    assert t.healthy
    t.checked(False, "refused", healthy_threshold=2, unhealthy_threshold=3)
    assert not t.healthy and not t.available(0.0)
    t.checked(True, "status 200", healthy_threshold=2, unhealthy_threshold=3)
    assert not t.healthy
    t.checked(True, "status 200", healthy_threshold=2, unhealthy_threshold=3)
    assert t.healthy and t.available(0.0)


@in_loop
async def test_no_target_available_means_no_pick() -> None:
    g = group_of(
        targets=[{"url": "http://127.0.0.1:1/a"}, {"url": "http://127.0.0.1:1/b"}],
        circuit_breaker={"failure_threshold": 1, "open_secs": 60},
    )
    a, b = g.targets
    g.report(a.pool, "connect")
    assert g.pick() is b.pool
    assert g.pick(exclude=b.pool) is None
    g.report(b.pool, "connect")
    assert g.pick() is None


@in_loop
async def test_the_retry_budget_bounds_retries_by_recent_requests() -> None:
    g = group_of(
        targets=[{"url": "http://127.0.0.1:1/a"}, {"url": "http://127.0.0.1:1/b"}],
        retries={"attempts": 3, "budget_percent": 10},
    )
    for _ in range(50):
        g.pick()
    # 10 % of 50 is 5; the floor of 3 does not matter here.
    allowed = 0
    while g.may_retry("connect_failure"):
        g.retried("connect_failure")
        allowed += 1
    assert allowed == 5
    assert g.retries_total == {"connect_failure": 5, "budget_exhausted": 1}
    assert not g.may_retry("status_503"), "not in retries.on"


@in_loop
async def test_one_plain_target_gets_no_group() -> None:
    pools, groups, upstreams = build_upstreams(
        [UpstreamConfig.model_validate({"id": "svc", "base_url": "http://127.0.0.1:1"})]
    )
    assert groups == {} and not pools["svc"].watched
    assert list(upstreams.samples()) == []  # no health of its own: readiness speaks for it


def test_target_names_are_host_port_and_path() -> None:
    assert target_name("http://user:pw@10.0.0.1:8080/") == "10.0.0.1:8080"
    assert target_name("https://svc.internal/v2/") == "svc.internal:443/v2"
    assert target_name("http://[::1]:81") == "[::1]:81"


@pytest.mark.parametrize(
    ("upstream", "message"),
    [
        ({"base_url": "http://a", "targets": [{"url": "http://b"}]}, "either base_url or targets"),
        ({}, "either base_url or targets"),
        ({"targets": [{"url": "http://b"}, {"url": "http://b"}]}, "listed twice"),
        ({"targets": [{"url": "ftp://b"}]}, "http:// or https://"),
        ({"targets": [{"url": "http://b", "weight": 0}]}, "greater than or equal to 1"),
        ({"base_url": "http://a", "retries": {"on": ["status_500"]}}, "status_503"),
    ],
)
def test_bad_upstream_settings_are_refused(upstream: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Config.model_validate({"upstreams": [{"id": "svc", **upstream}], "routes": []})
