"""Health: readiness states, cached checks, the built-in checks, and the health filter's routes."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import orjson

from apigate.config.schema import RouteConfig, UpstreamConfig
from apigate.gateway.router import Router
from apigate.redis.endpoint import RedisTarget
from apigate.telemetry import health as health_mod
from apigate.telemetry.filter import HealthFilter
from apigate.telemetry.health import Health, redis_check, upstream_check


def make(readiness: bool = True) -> tuple[Health, Any]:
    state = SimpleNamespace(draining=False)
    return Health(state, True, readiness), state  # type: ignore[arg-type]


def body(answer: tuple[int, bytes] | None) -> tuple[int, Any]:
    assert answer is not None
    return answer[0], orjson.loads(answer[1])


def test_states_without_checks() -> None:
    h, state = make()
    assert h.answer("/health/live") == (200, b'{"status":"ok"}')
    assert body(h.answer("/health/ready")) == (200, {"status": "ready"})
    state.draining = True
    assert body(h.answer("/health/ready"))[0] == 503
    assert body(h.answer("/health/ready"))[1]["status"] == "draining"
    assert h.answer("/other") is None


def test_disabled_endpoints_are_not_answered() -> None:
    h = Health(SimpleNamespace(draining=False), False, False)  # type: ignore[arg-type]
    assert h.answer("/health/live") is None
    assert h.answer("/health/ready") is None


def test_starting_then_results_then_failure_detail() -> None:
    h, _ = make()
    calls = {"n": 0, "ok": True}

    async def dep() -> tuple[bool, str]:
        calls["n"] += 1
        return calls["ok"], "fine" if calls["ok"] else "down"

    async def boom() -> tuple[bool, str]:
        raise ConnectionError("nope")

    async def slow() -> tuple[bool, str]:
        await asyncio.sleep(5)
        return True, ""

    h.register("dep", dep)
    status, b = body(h.answer("/health/ready"))
    assert (status, b["status"]) == (503, "starting")
    asyncio.run(h.run_checks())
    assert body(h.answer("/health/ready")) == (
        200,
        {"status": "ready", "checks": {"dep": {"ok": True, "detail": "fine"}}},
    )
    # Answering probes does not run checks: results are cached until the next round.
    for _ in range(10):
        h.answer("/health/ready")
    assert calls["n"] == 1
    calls["ok"] = False
    h.register("boom", boom)
    h.register("slow", slow, timeout=0.05)
    asyncio.run(h.run_checks())
    status, b = body(h.answer("/health/ready"))
    assert status == 503 and b["status"] == "not_ready"
    assert b["checks"]["dep"] == {"ok": False, "detail": "down"}
    assert b["checks"]["boom"] == {"ok": False, "detail": "ConnectionError: nope"}
    assert b["checks"]["slow"] == {"ok": False, "detail": "no answer within 0.05s"}


def test_background_loop_starts_and_stops() -> None:
    async def scenario() -> int:
        h, _ = make()
        n = {"c": 0}

        async def dep() -> tuple[bool, str]:
            n["c"] += 1
            return True, ""

        h.register("dep", dep)
        h.start()
        await asyncio.sleep(0.05)
        await h.stop()
        assert h.answer("/health/ready") is not None
        return n["c"]

    assert asyncio.run(scenario()) == 1


def test_upstream_check_tcp_and_health_path() -> None:
    async def scenario() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            code = b"204" if b"/ok" in line else b"500"
            writer.write(b"HTTP/1.1 " + code + b" X\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        assert await upstream_check(UpstreamConfig(id="a", base_url=base))() == (True, "connected")
        assert await upstream_check(UpstreamConfig(id="a", base_url=base, health_path="/ok"))() == (
            True,
            "GET /ok: 204",
        )
        assert await upstream_check(UpstreamConfig(id="a", base_url=base, health_path="/bad"))() == (
            False,
            "GET /bad: 500",
        )
        server.close()
        await server.wait_closed()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        try:
            await upstream_check(UpstreamConfig(id="a", base_url=f"http://127.0.0.1:{closed}"))()
        except OSError:
            pass
        else:
            raise AssertionError("a refused connection must fail the check")

    asyncio.run(scenario())


def test_redis_check_fails_fast_without_redis() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> tuple[bool, str]:
        h, _ = make()
        check, close = redis_check(f"redis://127.0.0.1:{port}/0", 0.05)
        h.register("redis", check, timeout=0.5)
        results = await h.run_checks()
        await close()
        return results["redis"]

    ok, detail = asyncio.run(scenario())
    assert ok is False and detail


def test_redis_target_falls_back_to_the_session_store() -> None:
    cfg: Any = SimpleNamespace(
        rate_limiting=None, auth=SimpleNamespace(session_store=SimpleNamespace(redis_url="redis://x"))
    )
    assert health_mod.redis_target_of(cfg) == RedisTarget("redis://x")
    rl = {"redis_url": "redis://rl", "redis_cluster_nodes": [], "redis_sentinel": None}
    cfg.rate_limiting = SimpleNamespace(**rl)
    assert health_mod.redis_target_of(cfg) == RedisTarget("redis://rl")
    cfg.rate_limiting = SimpleNamespace(**{**rl, "redis_url": None, "redis_cluster_nodes": ["h:1", "h:2"]})
    assert health_mod.redis_target_of(cfg) == RedisTarget(None, ("h:1", "h:2"))


def test_health_filter_joins_only_routes_covering_health_paths() -> None:
    router = Router(
        [
            RouteConfig(id="all", path="/*", upstream_id="u"),
            RouteConfig(id="api", path="/api/*", upstream_id="u"),
            RouteConfig(id="exact", path="/health/ready", upstream_id="u"),
            RouteConfig(id="param", path="/health/{x}", upstream_id="u"),
        ]
    )
    f = HealthFilter(Health(SimpleNamespace(draining=False), True, True))  # type: ignore[arg-type]
    assert {r.id: f.applies_to(r) for r in router.routes} == {
        "all": True,
        "api": False,
        "exact": True,
        "param": True,
    }
    assert f.applies_to(None) is False
