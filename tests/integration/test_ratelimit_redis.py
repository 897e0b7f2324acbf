"""The Redis limit store against real redis-server processes: the shared table of cases,
Redis time, expiry, batching, NOSCRIPT, deadlines, the circuit breaker, and Cluster."""

from __future__ import annotations

import asyncio
import random
import socket
import statistics
import time

import pytest
from auth_fixtures import RedisServer
from harness import HOST, free_port, wait_until
from ratelimit_fixtures import CASES, T0, Case, RedisCluster, RedisSentinel, redis_cluster, rl_redis

from apigate.ratelimit.algorithms import Algorithm, State, token_bucket_lease
from apigate.ratelimit.redis import (
    SCRIPT_SHA,
    RedisStore,
    StoreUnavailable,
    call_args,
    lease_args,
    packed_args,
)
from apigate.redis.endpoint import RedisTarget

__all__ = ["redis_cluster", "rl_redis"]  # fixtures


async def _replay(store: RedisStore, case: Case, key: bytes) -> None:
    for step in case.steps:
        args = packed_args(call_args(case.algorithm, case.limit, case.window_ms, now=T0 + step.at_ms))
        got = await store.check(key, args)
        want = (step.allowed, step.remaining, step.reset_ms, step.retry_ms)
        assert got == want, f"{case.name}: at +{step.at_ms} ms"


def test_redis_passes_the_shared_table(rl_redis: RedisServer) -> None:
    async def run() -> None:
        store = RedisStore(rl_redis.url, 2000)
        for i, case in enumerate(CASES):
            await _replay(store, case, b"table:%d" % i)
        await store.close()

    asyncio.run(run())


def test_the_lua_token_bucket_with_leases_answers_as_token_bucket_lease(rl_redis: RedisServer) -> None:
    """The same calls, with leases asked and given back at random, through the script and
    through algorithms.py: every answer equal, field by field."""
    rng = random.Random(18)

    async def run() -> None:
        store = RedisStore(rl_redis.url, 2000)
        for limit, window in ((7, 1000), (640, 10_000), (2000, 60_000)):
            key = b"lease:%d" % limit
            state: State | None = None
            now = T0 + 17
            epoch = -1
            for i in range(400):
                now += rng.choice([0, 0, 1, 7, 60, 130, 260, 600])
                want = rng.choice([0, 0, 4, 64])
                back = rng.choice([0, 0, 1, 3, 50])
                back_epoch = rng.choice([epoch, epoch - 1, epoch - 2])
                *expected, state_after, _ = token_bucket_lease(
                    state, now, limit, window, want, back_epoch, back
                )
                if state_after is not None:
                    state = state_after
                args = packed_args(call_args(Algorithm.TOKEN_BUCKET, limit, window, now=now))
                done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
                store.submit_lease(key, args, lease_args(want, back_epoch, back), done.set_result)
                got = store.lease_decision(await done)
                assert got == tuple(expected), f"limit {limit}/{window} ms, call {i} at +{now - T0} ms"
                epoch = expected[5]
        await store.close()

    asyncio.run(run())


def test_redis_time_every_key_expires_and_one_round_trip_per_loop_turn(rl_redis: RedisServer) -> None:
    client = rl_redis.client()
    client.flushall()

    async def run() -> None:
        store = RedisStore(rl_redis.url, 2000)
        for alg in Algorithm:
            args = packed_args(call_args(alg, 5, 60_000))
            futures = [store.check(b"rl:time:%d" % alg, args) for _ in range(8)]
            results = await asyncio.gather(*futures)
            assert [r[0] for r in results] == [True] * 5 + [False] * 3
        # many keys in one turn: one round trip
        before = store.round_trips
        args = packed_args(call_args(Algorithm.TOKEN_BUCKET, 100, 60_000))
        await asyncio.gather(*(store.check(b"rl:batch:%d" % i, args) for i in range(300)))
        assert store.round_trips == before + 1
        assert store.checks_per_round_trip > 1
        await store.close()

    asyncio.run(run())
    keys = list(client.scan_iter("rl:*"))
    assert len(keys) == 303
    ttls = [client.pttl(k) for k in keys]
    assert all(0 < t <= 120_000 for t in ttls), sorted(ttls)  # sliding: two windows


def test_noscript_is_reloaded(rl_redis: RedisServer) -> None:
    client = rl_redis.client()

    async def run() -> None:
        store = RedisStore(rl_redis.url, 2000)
        args = packed_args(call_args(Algorithm.FIXED_WINDOW, 3, 60_000))
        assert (await store.check(b"rl:noscript", args))[0]
        client.script_flush()
        assert client.script_exists(SCRIPT_SHA) == [False]
        results = await asyncio.gather(*(store.check(b"rl:noscript", args) for _ in range(3)))
        assert [r[0] for r in results] == [True, True, False]
        assert client.script_exists(SCRIPT_SHA) == [True]
        await store.close()

    asyncio.run(run())


def test_a_silent_redis_fails_within_the_timeout() -> None:
    """A server that accepts and never answers: every check gives up at timeout_ms."""
    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(16)
    port = silent.getsockname()[1]

    async def run() -> list[float]:
        store = RedisStore(f"redis://{HOST}:{port}", 50)
        args = packed_args(call_args(Algorithm.TOKEN_BUCKET, 10, 1000))
        waits = []
        while store.available and len(waits) < 100:  # open after 0.5 s of failures
            t = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await store.check(b"k", args)
            waits.append(time.perf_counter() - t)
        assert not store.available and len(waits) >= 3
        assert store.backend_errors["timeout"] >= 3
        await store.close()
        return waits

    try:
        waits = asyncio.run(run())
    finally:
        silent.close()
    assert statistics.median(waits) < 0.050 + 0.050, waits


def test_breaker_opens_on_a_dead_redis_and_closes_within_2s_of_its_return(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = RedisServer(tmp_path_factory.mktemp("rl-restart"))

    async def run() -> float:
        store = RedisStore(server.url, 50)
        args = packed_args(call_args(Algorithm.TOKEN_BUCKET, 1000, 60_000))
        assert (await store.check(b"k", args))[0]
        server.stop()
        for _ in range(100):
            if not store.available:
                break
            with pytest.raises(StoreUnavailable):
                await store.check(b"k", args)
            await asyncio.sleep(0.02)
        assert not store.available
        server.start()  # same port
        back = time.monotonic()
        while not store.available and time.monotonic() - back < 5:
            await asyncio.sleep(0.01)
        took = time.monotonic() - back
        assert (await store.check(b"k", args))[0]
        await store.close()
        return took

    try:
        took = asyncio.run(run())
    finally:
        server.stop()
    assert took < 2.0


def test_cluster_passes_the_shared_table_with_one_pipeline_per_node(redis_cluster: RedisCluster) -> None:
    import redis

    async def run() -> None:
        store = RedisStore(RedisTarget(cluster_nodes=tuple(redis_cluster.nodes)), 2000)
        for i, case in enumerate(CASES):
            await _replay(store, case, b"cluster:%d" % i)
        before = store.round_trips
        args = packed_args(call_args(Algorithm.FIXED_WINDOW, 2, 60_000))
        results = await asyncio.gather(*(store.check(b"rl:c:%d" % (i % 50), args) for i in range(150)))
        assert store.round_trips == before + 1  # one batch (redis-py sends one pipeline per node)
        assert sum(r[0] for r in results) == 100
        await store.close()

    asyncio.run(run())
    per_node = []
    for port in redis_cluster.ports:
        c = redis.Redis(host=HOST, port=port)
        per_node.append(sum(1 for _ in c.scan_iter("rl:c:*")))
        assert all(c.pttl(k) > 0 for k in c.scan_iter("rl:c:*"))
    assert sum(per_node) == 50 and all(n > 0 for n in per_node), per_node


def test_cluster_noscript_is_reloaded_on_every_node(redis_cluster: RedisCluster) -> None:
    import redis

    for port in redis_cluster.ports:
        redis.Redis(host=HOST, port=port).script_flush()

    async def run() -> None:
        store = RedisStore(RedisTarget(cluster_nodes=tuple(redis_cluster.nodes)), 2000)
        args = packed_args(call_args(Algorithm.TOKEN_BUCKET, 5, 60_000))
        results = await asyncio.gather(*(store.check(b"rl:ns:%d" % i, args) for i in range(30)))
        assert all(r[0] for r in results)
        await store.close()

    asyncio.run(run())


def test_unused_port_helper_is_free() -> None:
    assert wait_until(lambda: free_port() > 0, 1)


def test_sentinel_names_the_master(rl_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    sentinel = RedisSentinel(tmp_path_factory.mktemp("rl-sentinel"), rl_redis)
    try:
        client = rl_redis.client()
        client.delete("rl:sentinel")

        async def run() -> None:
            store = RedisStore(RedisTarget(sentinel=(sentinel.name, (sentinel.address,))), 2000)
            args = packed_args(call_args(Algorithm.FIXED_WINDOW, 2, 60_000))
            results = await asyncio.gather(*(store.check(b"rl:sentinel", args) for _ in range(3)))
            assert [r[0] for r in results] == [True, True, False]
            await store.close()

        asyncio.run(run())
        assert client.pttl("rl:sentinel") > 0  # written on the master the sentinel named
    finally:
        sentinel.stop()


def test_refill_and_rollover_on_redis_time(rl_redis: RedisServer) -> None:
    """The same boundaries with the clock the script reads from Redis (TIME)."""

    async def run() -> None:
        store = RedisStore(rl_redis.url, 2000)
        tb = packed_args(call_args(Algorithm.TOKEN_BUCKET, 2, 1000))  # a token every 500 ms
        first = [await store.check(b"rl:real:tb", tb) for _ in range(3)]
        assert [r[0] for r in first] == [True, True, False]
        assert 400 <= first[2][3] <= 500  # retry_ms: the next token
        await asyncio.sleep(first[2][3] / 1000 + 0.05)
        assert (await store.check(b"rl:real:tb", tb))[0]
        assert not (await store.check(b"rl:real:tb", tb))[0]

        fw = packed_args(call_args(Algorithm.FIXED_WINDOW, 1, 1000))
        await asyncio.sleep(1 - time.time() % 1 + 0.05)  # just after a (wall clock) boundary
        got = [await store.check(b"rl:real:fw", fw) for _ in range(2)]
        assert [r[0] for r in got] == [True, False]
        await asyncio.sleep(got[1][3] / 1000 + 0.05)  # retry_ms: the rollover
        assert (await store.check(b"rl:real:fw", fw))[0]
        await store.close()

    asyncio.run(run())
