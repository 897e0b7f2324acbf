"""Rate limiting through the gateway: headers and 429, X-Forwarded-For spoofing, exact
totals across 2 and 4 gateway processes sharing one Redis, and Redis killed mid-run
(fail_closed 503 within timeout_ms + 50 ms, fail_open on the local limiter, back on
Redis within 2 s of its return)."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from auth_fixtures import RedisServer
from harness import GatewayFactory, RawConn, UpstreamProcess, free_port, wait_until
from harness import Response as HttpResponse
from ratelimit_fixtures import hammer, read_status, rl_redis

__all__ = ["rl_redis"]  # fixture

WINDOW_LONG_S = 1_000_000  # no rollover and no meaningful refill during a test


def get(port: int, path: str = "/api/users", headers: dict[str, str] | None = None) -> HttpResponse:
    with RawConn(port) as c:
        c.request("GET", path, headers)
        return c.read_response()


def timed_get(port: int, path: str = "/api/users") -> tuple[HttpResponse, float]:
    with RawConn(port) as c:
        t = time.perf_counter()
        c.request("GET", path)
        resp = c.read_response()
        return resp, time.perf_counter() - t


def route(limit: dict[str, Any] | bool | None = None, rid: str = "users") -> dict[str, Any]:
    r: dict[str, Any] = {"id": rid, "methods": ["GET"], "path": "/api/users", "upstream_id": "demo"}
    if limit is not None:
        r["rate_limit"] = limit
    return r


def test_headers_on_every_response_and_429_with_retry_after(
    gateway: GatewayFactory, demo: UpstreamProcess
) -> None:
    gw = gateway({"demo": demo.url}, [route({"limit": 3, "window_secs": 60, "algorithm": "fixed_window"})])
    seen = [get(gw.port) for _ in range(4)]
    assert [r.status for r in seen] == [200, 200, 200, 429]
    for i, r in enumerate(seen):
        for prefix in ("", "x-"):
            assert r.header(f"{prefix}ratelimit-limit") == "3"
            assert r.header(f"{prefix}ratelimit-remaining") == str(max(0, 2 - i))
            assert 1 <= int(r.header(f"{prefix}ratelimit-reset") or "0") <= 60
    rejected = seen[3]
    assert 1 <= int(rejected.header("retry-after") or "0") <= 60
    assert rejected.json()["error"] == "rate_limited"
    assert rejected.json()["correlation_id"] == rejected.header("x-request-id")


def test_x_forwarded_for_cannot_pick_the_key(gateway: GatewayFactory, demo: UpstreamProcess) -> None:
    limit = {"limit": 2, "window_secs": 60, "key_type": "ip"}
    untrusting = gateway({"demo": demo.url}, [route(limit)])
    statuses = [get(untrusting.port, headers={"X-Forwarded-For": f"9.9.9.{i}"}).status for i in range(3)]
    assert statuses == [200, 200, 429]  # every spoofed value counted as the socket peer

    trusting = gateway({"demo": demo.url}, [route(limit)], {"trusted_proxies": ["127.0.0.0/8"]})
    spoofed = [
        get(trusting.port, headers={"X-Forwarded-For": f"9.9.9.{i}, 1.1.1.1"}).status for i in range(3)
    ]
    assert spoofed == [200, 200, 429]  # the client's own entries left of the proxy's are ignored
    assert get(trusting.port, headers={"X-Forwarded-For": "1.1.1.1, 2.2.2.2"}).status == 200  # 2.2.2.2
    assert get(trusting.port, headers={"X-Forwarded-For": "2.2.2.2"}).status == 200
    assert get(trusting.port, headers={"X-Forwarded-For": "2.2.2.2"}).status == 429


def _wait_off_boundary(window_s: int, margin_s: float = 120) -> None:
    if time.time() % window_s > window_s - margin_s:
        time.sleep(window_s - time.time() % window_s + 1)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
@pytest.mark.parametrize("algorithm", ["fixed_window", "token_bucket"])
def test_gateway_processes_sharing_redis_accept_exactly_the_limit(
    gateway: GatewayFactory, demo: UpstreamProcess, rl_redis: RedisServer, processes: int, algorithm: str
) -> None:
    limit = 250
    rl_redis.client().flushall()
    rl = {"redis_url": rl_redis.url, "failure_mode": "fail_closed", "timeout_ms": 1000}
    lim = {"limit": limit, "window_secs": WINDOW_LONG_S, "algorithm": algorithm, "key_type": "ip"}
    gws = [gateway({"demo": demo.url}, [route(lim)], rate_limiting=rl) for _ in range(processes)]
    _wait_off_boundary(WINDOW_LONG_S)
    counts = hammer([g.port for g in gws], "/api/users", 10_000)
    assert counts[200] == limit, counts
    assert counts[429] == 10_000 - limit, counts
    keys = list(rl_redis.client().scan_iter("rl:*"))
    assert len(keys) == 1 and rl_redis.client().pttl(keys[0]) > 0


@pytest.mark.slow
def test_with_leases_gateway_processes_sharing_redis_accept_exactly_the_limit_in_fewer_calls(
    gateway: GatewayFactory, demo: UpstreamProcess, rl_redis: RedisServer
) -> None:
    """`rate_limiting.leases`: most requests spend tokens leased to their process, and still
    exactly the limit passes across three processes; Redis saw far fewer checks than requests."""
    limit = 2000
    rl_redis.client().flushall()
    rl = {"redis_url": rl_redis.url, "failure_mode": "fail_closed", "timeout_ms": 1000, "leases": True}
    lim = {"limit": limit, "window_secs": WINDOW_LONG_S, "algorithm": "token_bucket", "key_type": "route"}
    gws = []
    for _ in range(3):
        mport = free_port()
        obs = {"metrics_enabled": True, "metrics_port": mport, "metrics_bind_address": "127.0.0.1"}
        gws.append((gateway({"demo": demo.url}, [route(lim)], rate_limiting=rl, observability=obs), mport))
    _wait_off_boundary(WINDOW_LONG_S)

    def checks() -> float:
        n = 0.0
        for _, mport in gws:
            for line in httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=10).text.splitlines():
                if line.startswith("rate_limit_backend_checks_total"):
                    n += float(line.split()[-1])
        return n

    # far from the limit (the first half of the bucket): most requests ask Redis nothing
    first = hammer([g.port for g, _ in gws], "/api/users", limit // 2)
    assert first[200] == limit // 2, first
    assert checks() < limit // 2 * 0.5, checks()
    # then to the limit and beyond: exactly the limit in all
    counts = hammer([g.port for g, _ in gws], "/api/users", 5000)
    assert first[200] + counts[200] == limit, counts
    assert counts[429] == 5000 - (limit - first[200]), counts


def _redis_gateway(
    gateway: GatewayFactory, demo: UpstreamProcess, redis: RedisServer, mode: str, limit: int = 1_000_000
) -> Any:
    rl = {"redis_url": redis.url, "failure_mode": mode, "timeout_ms": 50}
    lim = {"limit": limit, "window_secs": 3600, "algorithm": "token_bucket"}
    return gateway({"demo": demo.url}, [route(lim)], rate_limiting=rl)


def _back_on_redis_within(port: int, redis: RedisServer, seconds: float) -> float:
    """Time from now until a request is counted in Redis again."""
    client = redis.client()
    start = time.monotonic()

    def counted() -> bool:
        try:
            return get(port).status == 200 and any(client.scan_iter("rl:*"))
        except Exception:
            return False

    assert wait_until(counted, seconds + 3, 0.05)
    return time.monotonic() - start


def test_redis_killed_fail_closed(
    gateway: GatewayFactory, demo: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    redis = RedisServer(tmp_path_factory.mktemp("rl-kill"))
    try:
        gw = _redis_gateway(gateway, demo, redis, "fail_closed")
        assert get(gw.port).status == 200
        # Redis hung (SIGSTOP): each request waits at most timeout_ms on it
        assert redis.proc is not None
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            hung = [timed_get(gw.port) for _ in range(10)]
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)
        assert all(r.status == 503 and r.json()["error"] == "rate_limit_unavailable" for r, _ in hung)
        assert statistics.median(t for _, t in hung) < 0.050 + 0.050, [t for _, t in hung]
        # Redis killed: 503 at once (connection refused, then the open breaker)
        redis.stop()
        dead = [timed_get(gw.port) for _ in range(10)]
        assert all(r.status == 503 for r, _ in dead)
        assert statistics.median(t for _, t in dead) < 0.050 + 0.050, [t for _, t in dead]
        redis.start()
        assert _back_on_redis_within(gw.port, redis, 2.0) < 2.0
    finally:
        redis.stop()


def test_redis_killed_fail_open(
    gateway: GatewayFactory, demo: UpstreamProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    redis = RedisServer(tmp_path_factory.mktemp("rl-open"))
    try:
        gw = _redis_gateway(gateway, demo, redis, "fail_open", limit=5)
        assert [get(gw.port).status for _ in range(2)] == [200, 200]
        redis.stop()
        # degraded, not unlimited: the local limiter starts from a full bucket of 5
        statuses = [get(gw.port).status for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        assert wait_until(lambda: "rate_limit_degraded" in gw.stdout(), 5)
        redis.start()
        assert _back_on_redis_within(gw.port, redis, 2.0) < 2.0
        assert free_port() > 0
    finally:
        redis.stop()


def test_a_starved_gateway_with_a_healthy_redis_answers_no_503(
    gateway: GatewayFactory, demo: UpstreamProcess, rl_redis: RedisServer
) -> None:
    """Issue 16: a burst of new keep-alive connections (200 connecting at a time) while the
    gateway's loop is starved — here frozen for 150 ms at a time with SIGSTOP, three times
    the 50 ms deadline — must not be reported as a store outage: Redis answered at once."""
    rl_redis.client().flushall()  # (a key of another test's smaller limit would refuse)
    gw = _redis_gateway(gateway, demo, rl_redis, "fail_closed")
    assert get(gw.port).status == 200  # connected to Redis
    counts: Counter[int] = Counter()
    stop = threading.Event()

    def starve() -> None:
        while not stop.wait(0.05):
            os.killpg(gw.pid, signal.SIGSTOP)
            time.sleep(0.15)
            os.killpg(gw.pid, signal.SIGCONT)

    async def client(gate: asyncio.Semaphore) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                for _ in range(2):
                    writer.write(b"GET /api/users HTTP/1.1\r\nHost: gw.test\r\n\r\n")
                    counts[await read_status(reader)] += 1
            finally:
                writer.close()

    async def burst() -> None:
        gate = asyncio.Semaphore(200)
        await asyncio.wait_for(asyncio.gather(*(client(gate) for _ in range(2000))), 120)

    starver = threading.Thread(target=starve, daemon=True)
    starver.start()
    try:
        asyncio.run(burst())
    finally:
        stop.set()
        starver.join()
        os.killpg(gw.pid, signal.SIGCONT)
    assert counts == Counter({200: 4000}), counts
