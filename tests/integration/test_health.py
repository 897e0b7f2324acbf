"""/health/live and /health/ready of a real apigate, against a real redis-server and upstreams."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from auth_fixtures import SECRET, RedisServer
from harness import HOST, Conn, GatewayFactory, UpRequest, free_port, wait_until


class Switch:
    """An upstream whose /healthz answers `status` (and /slow takes a while)."""

    def __init__(self) -> None:
        self.status = 200
        self.health_hits = 0

    async def __call__(self, req: UpRequest, conn: Conn) -> bool:
        if req.path == "/healthz":
            self.health_hits += 1
            await conn.respond(self.status, b"")
            return False
        if req.path == "/slow":
            import asyncio

            await asyncio.sleep(2)
        await conn.respond(200, b"upstream")
        return True


def ready(port: int) -> tuple[int, Any]:
    r = httpx.get(f"http://{HOST}:{port}/health/ready", timeout=10)
    return r.status_code, r.json()


def test_readiness_follows_redis_and_upstreams(
    gateway: GatewayFactory, scripted: Any, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path)
    try:
        switch = Switch()
        up = scripted(switch)
        mport = free_port()
        gw = gateway(
            {"app": {"base_url": up.url, "health_path": "/healthz"}},
            # /* covers /health/*: the probe must still not be proxied, authenticated or limited.
            [{"id": "all", "path": "/*", "upstream_id": "app", "auth_required": True}],
            observability={
                "metrics_enabled": True,
                "metrics_port": mport,
                "health_checks": {"check_redis": True, "check_upstreams": True},
            },
            auth={"jwt_secret": SECRET},
            rate_limiting={"redis_url": redis.url},
        )
        assert wait_until(lambda: ready(mport)[0] == 200, 15, interval=0.1)
        for port in (mport, gw.port):
            status, body = ready(port)
            assert status == 200
            assert body["status"] == "ready"
            assert body["checks"]["redis"] == {"ok": True, "detail": "PONG"}
            assert body["checks"]["upstream:app"]["ok"] is True
            assert httpx.get(f"http://{HOST}:{port}/health/live", timeout=10).json() == {"status": "ok"}
        assert httpx.get(gw.url + "/anything", timeout=10).status_code == 401  # the route is guarded
        assert not up.requests_to("/health/ready")

        # Probes are answered from cached results: 60 probes, about one check per second.
        before, t0 = switch.health_hits, time.monotonic()
        for _ in range(30):
            assert ready(mport)[0] == 200
            assert ready(gw.port)[0] == 200
        elapsed = time.monotonic() - t0
        assert switch.health_hits - before <= elapsed / 1.0 + 2

        switch.status = 503
        assert wait_until(lambda: ready(gw.port)[0] == 503, 10, interval=0.1)
        status, body = ready(mport)
        assert status == 503 and body["status"] == "not_ready"
        assert body["checks"]["upstream:app"] == {"ok": False, "detail": "GET /healthz: 503"}
        assert body["checks"]["redis"]["ok"] is True
        switch.status = 200
        assert wait_until(lambda: ready(mport)[0] == 200, 10, interval=0.1)

        redis.stop()
        assert wait_until(lambda: ready(mport)[0] == 503, 10, interval=0.1)
        assert ready(mport)[1]["checks"]["redis"]["ok"] is False
        redis.start()
        assert wait_until(lambda: ready(mport)[0] == 200, 15, interval=0.1)
    finally:
        redis.stop()


def test_tcp_check_without_health_path(gateway: GatewayFactory, scripted: Any) -> None:
    up = scripted(Switch())
    mport = free_port()
    gateway(
        {"app": up.url, "gone": f"http://{HOST}:{free_port()}"},
        observability={"metrics_port": mport, "health_checks": {"check_upstreams": True}},
    )
    assert wait_until(lambda: ready(mport)[0] == 503 and "upstream:gone" in ready(mport)[1]["checks"], 10)
    checks = ready(mport)[1]["checks"]
    assert checks["upstream:app"] == {"ok": True, "detail": "connected"}
    assert checks["upstream:gone"]["ok"] is False
    assert "refused" in checks["upstream:gone"]["detail"].lower()


def test_readiness_is_503_from_the_moment_draining_starts(gateway: GatewayFactory, scripted: Any) -> None:
    up = scripted(Switch())
    mport = free_port()
    gw = gateway({"app": up.url}, server={"drain_timeout_secs": 10}, observability={"metrics_port": mport})
    assert ready(mport) == (200, {"status": "ready"})
    slow: dict[str, int] = {}

    def request() -> None:
        slow["status"] = httpx.get(gw.url + "/slow", timeout=20).status_code

    t = threading.Thread(target=request)
    t.start()
    assert wait_until(lambda: bool(up.requests_to("/slow")), 10)
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    # The proxy port stops accepting; the metrics port answers 503 until the drain ends.
    assert wait_until(lambda: ready(mport)[0] == 503, 5, interval=0.02)
    assert ready(mport)[1]["status"] == "draining"
    assert httpx.get(f"http://{HOST}:{mport}/health/live", timeout=5).status_code == 200
    t.join(20)
    assert slow["status"] == 200  # the in-flight request finished
