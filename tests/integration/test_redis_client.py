"""The shared Redis client (apigate/redis/) against real redis-server processes: a starved
event loop is not a Redis outage, a slow Redis still is, sessions on a Cluster, the
readiness check on a Cluster, and the configuration's targets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import uvloop
from auth_fixtures import RedisServer
from ratelimit_fixtures import RedisCluster, RedisSentinel, redis_cluster, rl_redis

from apigate.auth.sessions import KEY_PREFIX, RedisSessionStore, new_token, session_claims
from apigate.config.schema import Config
from apigate.ratelimit.algorithms import Algorithm
from apigate.ratelimit.redis import RedisStore, StoreUnavailable, call_args, packed_args
from apigate.redis.client import RedisClient
from apigate.redis.endpoint import RedisTarget, ratelimit_target, session_target
from apigate.redis.resp import pack
from apigate.telemetry.health import redis_check

__all__ = ["redis_cluster", "rl_redis"]  # fixtures

T = TypeVar("T")
BLOCK_S = 0.3  # how long the loop is kept busy: six times the 50 ms deadline


def on_uvloop(main: Callable[[], Awaitable[T]]) -> T:
    """The gateway's loop: uvloop runs due timers before it polls for I/O, which is what
    turned a busy loop into rate_limit_unavailable answers."""
    return uvloop.run(main())  # type: ignore[no-any-return]


class LoopHog:
    """Keeps the loop busy inside an I/O callback (as reading a burst of new connections
    does), started right after this turn's batch was written: Redis answers at once, and
    the loop's next timer phase comes BLOCK_S later, before it polls for the reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.rsock, self.wsock = socket.socketpair()
        self.rsock.setblocking(False)
        loop.add_reader(self.rsock.fileno(), self._busy)

    def _busy(self) -> None:
        self.rsock.recv(16)
        time.sleep(BLOCK_S)

    def after_the_flush(self) -> None:
        self.loop.call_soon(self.wsock.send, b"x")  # queued behind the client's flush

    def close(self) -> None:
        self.loop.remove_reader(self.rsock.fileno())
        self.rsock.close()
        self.wsock.close()


def test_a_starved_loop_is_not_a_redis_outage(rl_redis: RedisServer) -> None:
    async def run() -> RedisStore:
        store = RedisStore(rl_redis.url, 50)
        hog = LoopHog(asyncio.get_running_loop())
        args = packed_args(call_args(Algorithm.TOKEN_BUCKET, 10**6, 60_000))
        assert (await store.check(b"rl:starved", args))[0]  # connected
        for _ in range(5):
            checks = [store.check(b"rl:starved:%d" % i, args) for i in range(200)]
            hog.after_the_flush()
            results = await asyncio.gather(*checks, return_exceptions=True)
            assert all(isinstance(r, tuple) and r[0] for r in results), {repr(r) for r in results}
        hog.close()
        await store.close()
        return store

    store = on_uvloop(run)
    assert store.backend_errors["timeout"] == 0 and store.backend_errors["connection"] == 0
    assert store.client.starved >= 1  # a deadline fired late and found the replies unread
    assert store.available


def test_a_slow_redis_still_times_out(rl_redis: RedisServer) -> None:
    """CLIENT PAUSE holds every reply back: no byte waits unread, so it is a timeout, for
    the batches written and for the commands held behind them."""
    pauser = rl_redis.client()

    async def run() -> tuple[list[object], float]:
        client = RedisClient(RedisTarget(rl_redis.url), 0.05)
        assert await client.call(pack(b"PING")) == b"PONG"
        pauser.execute_command("CLIENT", "PAUSE", "400", "ALL")
        started = time.monotonic()
        calls = []
        for _ in range(4):  # four loop turns: two batches written, the later ones held behind them
            calls += [client.call(pack(b"PING")) for _ in range(5)]
            await asyncio.sleep(0)
        results = await asyncio.gather(*calls, return_exceptions=True)
        took = time.monotonic() - started
        await client.close()
        return results, took

    results, took = on_uvloop(run)
    assert all(isinstance(r, StoreUnavailable) and r.reason == "timeout" for r in results), results
    assert took < 0.3, took  # the 50 ms deadline, not the 400 ms pause


def test_sessions_on_a_cluster_one_get_per_token_on_each_node(redis_cluster: RedisCluster) -> None:
    import redis

    tokens = [new_token() for _ in range(30)]

    async def run() -> list[Any]:
        store = RedisSessionStore(RedisTarget(cluster_nodes=tuple(redis_cluster.nodes)), 2)
        for t in tokens[:20]:
            await store.create(t, session_claims(t[:5], 60), 60)
        found = await asyncio.gather(*(store.lookup(t) for t in tokens))  # type: ignore[misc]
        assert await store.revoke(tokens[0]) is True and await store.revoke(tokens[0]) is False
        assert await store.lookup(tokens[0]) is None  # type: ignore[misc]
        await store.close()
        return list(found)

    found = asyncio.run(run())
    hits = [c is not None and c["sub"] == t[:5] for c, t in zip(found, tokens, strict=True)]
    assert hits == [True] * 20 + [False] * 10
    per_node = [
        sum(1 for _ in redis.Redis(host="127.0.0.1", port=p).scan_iter(KEY_PREFIX + "*"))
        for p in redis_cluster.ports
    ]
    assert sum(per_node) == 19 and all(n > 0 for n in per_node), per_node  # spread over the masters


def test_sessions_through_sentinel(rl_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Rate limiting reached through Sentinel: sessions (no redis_url of their own) follow."""
    sentinel = RedisSentinel(tmp_path_factory.mktemp("sessions-sentinel"), rl_redis)
    try:
        cfg = _cfg({"redis_sentinel": {"master_name": sentinel.name, "sentinels": [sentinel.address]}})
        target = session_target(cfg)
        assert target is not None and target.sentinel is not None

        async def run() -> tuple[Any, Any]:
            store = RedisSessionStore(target, 2)
            token = new_token()
            await store.create(token, session_claims("gus", 60), 60)
            found = await store.lookup(token)  # type: ignore[misc]
            raw = rl_redis.client().get(KEY_PREFIX + token)  # on the master the sentinel names
            await store.close()
            return found, raw

        found, raw = asyncio.run(run())
        assert found is not None and found["sub"] == "gus" and raw is not None
    finally:
        sentinel.stop()


def test_readiness_pings_a_cluster(redis_cluster: RedisCluster) -> None:
    async def run() -> tuple[bool, str]:
        check, close = redis_check(RedisTarget(cluster_nodes=tuple(redis_cluster.nodes)), 0.5)
        try:
            return await check()
        finally:
            await close()

    assert asyncio.run(run()) == (True, "PONG")


def _cfg(rate_limiting: dict[str, Any] | None, session_url: str | None = None) -> Config:
    raw: dict[str, Any] = {"upstreams": [{"id": "u", "base_url": "http://127.0.0.1:1"}], "routes": []}
    if rate_limiting is not None:
        raw["rate_limiting"] = rate_limiting
    raw["auth"] = {"token_format": "session", "session_store": {"redis_url": session_url}}
    return Config.model_validate(raw)


@pytest.mark.parametrize(
    ("rate_limiting", "session_url", "want"),
    [
        (None, None, None),
        ({"redis_url": "redis://a:1/0"}, None, RedisTarget("redis://a:1/0")),
        ({"redis_url": "redis://a:1/0"}, "redis://s:2/0", RedisTarget("redis://s:2/0")),
        (
            {"redis_url": "redis://:pw@x/0", "redis_cluster_nodes": ["c1:7000", "c2:7001"]},
            None,
            RedisTarget("redis://:pw@x/0", ("c1:7000", "c2:7001")),
        ),
        (
            {"redis_sentinel": {"master_name": "m", "sentinels": ["s1:26379"]}},
            None,
            RedisTarget(None, (), ("m", ("s1:26379",))),
        ),
    ],
)
def test_sessions_follow_rate_limitings_redis_cluster_and_sentinel_included(
    rate_limiting: dict[str, Any] | None, session_url: str | None, want: RedisTarget | None
) -> None:
    cfg = _cfg(rate_limiting, session_url)
    assert session_target(cfg) == want
    if session_url is None:
        assert ratelimit_target(cfg) == want


def test_a_target_names_no_password() -> None:
    assert str(RedisTarget("redis://user:s3cret@h:6380/1")) == "redis://h:6380"
    assert "s3cret" not in repr(RedisClient(RedisTarget("redis://:s3cret@h:6380/1"), 0.05))


def test_filters_connect_at_start_before_any_request(rl_redis: RedisServer) -> None:
    """A first connect in the middle of a burst would share the busy loop: the rate-limit
    and session filters open their connections at start, before the listener accepts."""
    from apigate.auth.filter import AuthFilter
    from apigate.ratelimit.filter import RateLimitFilter

    cfg = _cfg({"redis_url": rl_redis.url, "default_limit": {"limit": 5, "window_secs": 60}})
    admin = rl_redis.client()

    def clients() -> int:
        return len(admin.client_list())

    async def run() -> tuple[int, int]:
        before = clients()
        filters = [RateLimitFilter(cfg), AuthFilter(cfg)]
        for f in filters:
            await f.start()
        for _ in range(200):
            if clients() >= before + 2:
                break
            await asyncio.sleep(0.01)
        after = clients()
        for f in filters:
            await f.close()
        return before, after

    before, after = asyncio.run(run())
    assert after == before + 2  # one connection each, no request made
