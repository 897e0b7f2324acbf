"""Scale-out, as three pods behind a Service would run: three apigate instances (separate
processes on separate ports) sharing one redis-server, and a client that spreads its
requests across them. A route limited to L requests per window admits exactly L in total;
a session revoked through one instance is refused by all; killing one instance under load
loses no request that the client retries at another.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from auth_fixtures import RedisServer, apigate_cli, redis_server
from harness import Gateway, GatewayFactory, ScriptedUpstream, wait_until
from ratelimit_fixtures import hammer
from test_metrics import status_handler

__all__ = ["redis_server"]

INSTANCES = 3
LIMIT = 150
CACHE_TTL_S = 1.0
ROUTES = [
    # A window so long that no token comes back during the test: exactly LIMIT, in total.
    {
        "id": "limited",
        "path": "/limited/*",
        "upstream_id": "app",
        "rate_limit": {
            "limit": LIMIT,
            "window_secs": 1_000_000,
            "algorithm": "token_bucket",
            "key_type": "route",
        },
    },
    {"id": "private", "path": "/private/*", "upstream_id": "app", "auth_required": True},
    {"id": "public", "path": "/public/*", "upstream_id": "app"},
]


@pytest.fixture
def instances(gateway: GatewayFactory, scripted: Any, redis_server: RedisServer) -> Iterator[list[Gateway]]:
    redis_server.client().flushall()
    upstream: ScriptedUpstream = scripted(status_handler)
    sections = {
        "rate_limiting": {"redis_url": redis_server.url, "failure_mode": "fail_closed"},
        "auth": {"token_format": "session", "cache": {"enabled": True, "ttl_secs": CACHE_TTL_S}},
    }
    yield [gateway({"app": upstream.url}, ROUTES, **sections) for _ in range(INSTANCES)]


def test_a_limit_of_l_admits_exactly_l_across_all_instances(instances: list[Gateway]) -> None:
    counts = hammer([gw.port for gw in instances], "/limited/x", 3 * LIMIT, conns_per_port=4)
    assert counts == {200: LIMIT, 429: 2 * LIMIT}, counts


def test_a_session_revoked_through_one_instance_is_refused_by_all(instances: list[Gateway]) -> None:
    first, second = (str(gw.config_path) for gw in instances[:2])
    out = apigate_cli("session", "create", "--config", first, "--sub", "alice", "--ttl", "600")
    assert out.returncode == 0, out.stderr
    auth = {"Authorization": f"Bearer {out.stdout.strip()}"}
    clients = [httpx.Client(base_url=gw.url, timeout=10) for gw in instances]
    try:
        assert [c.get("/private/x", headers=auth).status_code for c in clients] == [200] * INSTANCES
        out = apigate_cli("session", "revoke", "--config", second, auth["Authorization"][7:])
        assert out.returncode == 0 and out.stdout.strip() == "revoked", out.stdout + out.stderr
        revoked = time.monotonic()
        # Each instance may still hold the verified session for auth.cache.ttl_secs.
        for c in clients:
            assert wait_until(lambda c=c: c.get("/private/x", headers=auth).status_code == 401, 30, 0.05)
        waited = time.monotonic() - revoked
        for c in clients:
            assert c.get("/private/x", headers=auth).status_code == 401
            assert c.get("/private/x", headers={}).status_code == 401
        print(f"refused by all {INSTANCES} instances {waited:.2f} s after revocation (cache {CACHE_TTL_S} s)")
    finally:
        for c in clients:
            c.close()


def test_killing_an_instance_under_load_loses_no_retried_request(instances: list[Gateway]) -> None:
    total, workers = 900, 12
    victim = instances[1]
    urls = [gw.url for gw in instances]
    ok: set[int] = set()
    retries = 0
    next_id = iter(range(total))
    killed_at: float | None = None

    async def one(client: httpx.AsyncClient, rid: int, start: int) -> None:
        nonlocal retries
        for attempt in range(2 * INSTANCES):
            url = urls[(start + attempt) % INSTANCES]
            try:
                r = await client.get(f"{url}/public/{rid}")
            except httpx.TransportError:
                retries += 1  # connection refused or cut: the client tries the next instance
                continue
            assert r.status_code == 200, (url, r.status_code, r.text)
            ok.add(rid)
            return
        raise AssertionError(f"request {rid} failed at every instance")

    async def worker(n: int) -> None:
        limits = httpx.Limits(max_keepalive_connections=INSTANCES, max_connections=INSTANCES)
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            for rid in next_id:
                await one(client, rid, rid + n)

    async def killer() -> None:
        nonlocal killed_at
        while len(ok) < total // 3:
            await asyncio.sleep(0.005)
        os.killpg(victim.pid, signal.SIGKILL)  # a pod lost at once: no drain, connections cut
        killed_at = time.monotonic()

    async def run() -> None:
        await asyncio.gather(killer(), *(worker(n) for n in range(workers)))

    asyncio.run(run())
    assert (killed_at is not None and not victim.alive()) or victim.proc is not None
    victim.stop()
    assert ok == set(range(total))
    assert retries > 0, "the kill never hit a request: nothing was proved"
    print(f"{total} requests, {retries} retried at another instance after the kill, none lost")
