"""Session tokens in a real Redis: the store itself, the CLI, and the gateway using both.

redis-server is started by the tests on a free port (`--save '' --appendonly no`); in CI
a missing redis-server fails the run instead of skipping it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from auth_fixtures import SECURE_ROUTE, RedisServer, apigate_cli, redis_server, write_yaml
from harness import Gateway, GatewayFactory, UpstreamProcess, wait_until
from ratelimit_fixtures import RedisCluster, redis_cluster

from apigate.auth.reasons import AuthFailure
from apigate.auth.sessions import KEY_PREFIX, RedisSessionStore, new_token, session_claims

__all__ = ["redis_cluster", "redis_server"]  # the fixtures, imported for pytest

ROUTES = [SECURE_ROUTE]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ----------------------------------------------------------------------------- the store
def test_sessions_are_json_claims_under_session_token_with_a_ttl(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        store = RedisSessionStore(redis_server.url, timeout=2)
        token = new_token()
        await store.create(token, session_claims("alice", 60, {"scope": "admin"}), 60)
        claims = await store.lookup(token)  # type: ignore[misc]
        assert claims is not None and claims["sub"] == "alice" and claims["scope"] == "admin"
        assert await store.lookup("no-such-session") is None  # type: ignore[misc]
        assert await store.revoke(token) is True and await store.revoke(token) is False
        assert await store.lookup(token) is None  # type: ignore[misc]
        await store.close()

    run(scenario())
    r = redis_server.client()
    token = new_token()
    run(_create(redis_server.url, token, "bob", 30))
    raw = r.get(KEY_PREFIX + token)
    assert isinstance(raw, bytes) and orjson.loads(raw)["sub"] == "bob"
    ttl = r.pttl(KEY_PREFIX + token)
    assert isinstance(ttl, int) and 0 < ttl <= 30_000


async def _create(url: str, token: str, sub: str, ttl: int) -> None:
    store = RedisSessionStore(url, timeout=2)
    await store.create(token, session_claims(sub, ttl), ttl)
    await store.close()


def test_lookups_of_one_loop_turn_are_one_mget(redis_server: RedisServer) -> None:
    r = redis_server.client()
    tokens = [new_token() for _ in range(20)]

    async def scenario() -> list[Any]:
        store = RedisSessionStore(redis_server.url, timeout=2)
        for t in tokens[:10]:
            await store.create(t, session_claims(t[:6], 60), 60)
        r.config_resetstat()
        # 20 distinct tokens and 20 repeats of one, all in the same turn.
        results = await asyncio.gather(*(store.lookup(t) for t in tokens + [tokens[0]] * 20))  # type: ignore[misc]
        await store.close()
        return list(results)

    results = run(scenario())
    assert [c is not None for c in results[:20]] == [True] * 10 + [False] * 10
    assert all(c is not None and c["sub"] == tokens[0][:6] for c in results[20:])
    stats = r.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1 and "cmdstat_get" not in stats


def test_a_stopped_redis_fails_fast_and_recovers(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    try:

        async def lookup(store: RedisSessionStore, token: str) -> object:
            try:
                return await store.lookup(token)  # type: ignore[misc]
            except AuthFailure as f:
                return f.reason

        async def scenario() -> None:
            store = RedisSessionStore(server.url, timeout=0.3)
            token = new_token()
            await store.create(token, session_claims("alice", 60), 60)
            server.stop()
            started = time.monotonic()
            assert await lookup(store, token) == "store_unavailable"
            assert time.monotonic() - started < 2
            server.start()
            assert await lookup(store, token) is None  # a new, empty Redis
            await store.close()

        run(scenario())
    finally:
        server.stop()


# ----------------------------------------------------------------------------- through the gateway
@pytest.fixture
def session_gateway(
    gateway: GatewayFactory, demo: UpstreamProcess, redis_server: RedisServer
) -> Iterator[Gateway]:
    auth = {
        "token_format": "session",
        "session_store": {"redis_url": redis_server.url},
        "cache": {"ttl_secs": 1},
    }
    yield gateway({"demo": demo.url}, ROUTES, auth=auth)


def test_session_create_use_revoke(session_gateway: Gateway) -> None:
    cfg = str(session_gateway.config_path)
    out = apigate_cli(
        "session", "create", "--config", cfg, "--sub", "alice", "--ttl", "3600", "--claims", "team=core"
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert len(token) >= 43
    with httpx.Client(base_url=session_gateway.url, timeout=10) as c:
        auth = {"Authorization": f"Bearer {token}", "X-User-ID": "mallory"}
        r = c.get("/secure/x", headers=auth)
        assert r.status_code == 200 and dict(r.json()["headers"])["x-user-id"] == "alice"
        assert c.get("/secure/x", headers={"Authorization": "Bearer not-a-session"}).status_code == 401
        out = apigate_cli("session", "revoke", "--config", cfg, token)
        assert out.returncode == 0 and out.stdout.strip() == "revoked"
        # Cached for at most cache.ttl_secs (1 s here), then refused.
        assert wait_until(lambda: c.get("/secure/x", headers=auth).status_code == 401, 5, 0.1)
        r = c.get("/secure/x", headers=auth)
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert r.json()["message"] == "The session is unknown or has ended."
    out = apigate_cli("session", "revoke", "--config", cfg, token)
    assert out.returncode == 1 and out.stdout.strip() == "no such session"


def test_the_rate_limiting_redis_is_used_when_sessions_name_none(
    gateway: GatewayFactory, demo: UpstreamProcess, redis_server: RedisServer, tmp_path: Path
) -> None:
    gw = gateway(
        {"demo": demo.url},
        ROUTES,
        auth={"token_format": "session"},
        rate_limiting={"redis_url": redis_server.url},
    )
    out = apigate_cli("session", "create", "--config", str(gw.config_path), "--sub", "bob")
    assert out.returncode == 0, out.stderr
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        r = c.get("/secure/x", headers={"Cookie": f"session_token={out.stdout.strip()}"})
        assert r.status_code == 200 and dict(r.json()["headers"])["x-user-id"] == "bob"


def test_sessions_on_rate_limitings_redis_cluster(
    gateway: GatewayFactory, demo: UpstreamProcess, redis_cluster: RedisCluster
) -> None:
    """No session_store.redis_url: sessions live where rate limiting's Redis is, a Cluster
    here — the CLI writes them there and the gateway finds them there."""
    gw = gateway(
        {"demo": demo.url},
        ROUTES,
        auth={"token_format": "session", "cache": {"enabled": False}},
        rate_limiting={"redis_cluster_nodes": redis_cluster.nodes},
    )
    cfg = str(gw.config_path)
    tokens = []
    for sub in ("dora", "emil", "fay"):
        out = apigate_cli("session", "create", "--config", cfg, "--sub", sub)
        assert out.returncode == 0, out.stderr
        tokens.append(out.stdout.strip())
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        for sub, token in zip(("dora", "emil", "fay"), tokens, strict=True):
            r = c.get("/secure/x", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and dict(r.json()["headers"])["x-user-id"] == sub
        out = apigate_cli("session", "revoke", "--config", cfg, tokens[0])
        assert out.returncode == 0 and out.stdout.strip() == "revoked"
        assert c.get("/secure/x", headers={"Authorization": f"Bearer {tokens[0]}"}).status_code == 401


def test_redis_down_is_503_then_recovers(
    gateway: GatewayFactory, demo: UpstreamProcess, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)
    try:
        auth = {"token_format": "session", "session_store": {"redis_url": server.url, "timeout_ms": 200}}
        gw = gateway({"demo": demo.url}, ROUTES, auth=auth)
        cfg = str(gw.config_path)
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            server.stop()
            started = time.monotonic()
            r = c.get("/secure/x", headers={"Authorization": f"Bearer {new_token()}"})
            assert r.status_code == 503 and r.json()["error"] == "auth_unavailable"
            assert r.headers["retry-after"] == "1" and time.monotonic() - started < 3
            server.start()
            out = apigate_cli("session", "create", "--config", cfg, "--sub", "carol")
            assert out.returncode == 0, out.stderr
            r = c.get("/secure/x", headers={"Authorization": f"Bearer {out.stdout.strip()}"})
            assert r.status_code == 200 and dict(r.json()["headers"])["x-user-id"] == "carol"
        assert '"reason":"store_unavailable"' in gw.stdout()
    finally:
        server.stop()


def test_session_cli_reports_an_unreachable_redis(tmp_path: Path) -> None:
    from harness import free_port

    cfg = write_yaml(
        tmp_path / "c.yaml",
        {
            "auth": {
                "token_format": "session",
                "session_store": {"redis_url": f"redis://127.0.0.1:{free_port()}"},
            }
        },
    )
    out = apigate_cli("session", "create", "--config", cfg, "--sub", "alice")
    assert out.returncode == 1 and "session store" in out.stderr and out.stdout == ""
