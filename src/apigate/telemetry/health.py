"""Liveness and readiness, answered from cached dependency checks.

`/health/live` says the process serves; `/health/ready` says this instance should get
traffic: not draining, and every enabled check passing (Redis answers PING within the
rate-limit timeout; each upstream answers its `health_path`, or accepts a TCP connection).

Checks run in a background task every CHECK_INTERVAL_S, never because a probe arrived:
probes are answered from the last results, so any number of probes (two ports, several
kubelets, a load balancer) costs the dependencies one check per interval per worker.
Until the first round has finished, readiness says 503 "starting".

Other packages add their own checks with `Health.register(name, check)`; a check is an
async callable returning (ok, detail) and is bounded by CHECK_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

from apigate.http.client import UpstreamPool
from apigate.http.probe import probe
from apigate.redis.client import RedisClient
from apigate.redis.endpoint import RedisTarget, ratelimit_target, session_target

if TYPE_CHECKING:
    from apigate.config.schema import Config, UpstreamConfig
    from apigate.http.server import ServerState

HEALTH_LIVE = "/health/live"
HEALTH_READY = "/health/ready"
CHECK_INTERVAL_S = 1.0  # results are at most this old (plus one check's duration)
CHECK_TIMEOUT_S = 2.0  # a check that has not answered by then has failed

Check: TypeAlias = Callable[[], Awaitable[tuple[bool, str]]]


class Health:
    """What /health/live and /health/ready answer, on the main port and the metrics port."""

    def __init__(self, state: ServerState, liveness: bool, readiness: bool) -> None:
        self.state = state
        self.liveness = liveness
        self.readiness = readiness
        self.checks: dict[str, Check] = {}
        self.timeouts: dict[str, float] = {}
        self.results: dict[str, tuple[bool, str]] | None = None
        self.cleanups: list[Callable[[], Awaitable[None]]] = []
        self._task: asyncio.Task[None] | None = None
        # Extra state shown by /health/ready (the upstream targets: gateway/balancer.py).
        self.details: dict[str, Callable[[], object]] = {}

    def register(self, name: str, check: Check, timeout: float = CHECK_TIMEOUT_S) -> None:
        self.checks[name] = check
        self.timeouts[name] = timeout
        self.results = None

    def answer(self, path: str) -> tuple[int, bytes] | None:
        """(status, JSON body) for a health path, or None if it is not one (or is off)."""
        if path == HEALTH_LIVE and self.liveness:
            return 200, b'{"status":"ok"}'
        if path == HEALTH_READY and self.readiness:
            return self._ready()
        return None

    def _ready(self) -> tuple[int, bytes]:
        if self.state.draining:
            return 503, orjson.dumps({"status": "draining", "checks": self._checks_json()})
        if not self.checks:
            if not self.details:
                return 200, b'{"status":"ready"}'
            return 200, orjson.dumps({"status": "ready", **self._details()})
        if self.results is None:
            return 503, orjson.dumps({"status": "starting", "checks": self._checks_json()})
        ok = all(r[0] for r in self.results.values())
        body = {"status": "ready" if ok else "not_ready", "checks": self._checks_json(), **self._details()}
        return (200 if ok else 503), orjson.dumps(body)

    def _details(self) -> dict[str, object]:
        return {name: get() for name, get in self.details.items()}

    def _checks_json(self) -> dict[str, Any]:
        if self.results is None:
            return {name: {"ok": False, "detail": "not checked yet"} for name in self.checks}
        return {name: {"ok": ok, "detail": detail} for name, (ok, detail) in self.results.items()}

    # ------------------------------------------------------------------ the background loop
    async def run_checks(self) -> dict[str, tuple[bool, str]]:
        """Run every check once, concurrently; store and return the results."""
        names = list(self.checks)
        outcomes = await asyncio.gather(*(self._one(n) for n in names))
        self.results = dict(zip(names, outcomes, strict=True))
        return self.results

    async def _one(self, name: str) -> tuple[bool, str]:
        try:
            return await asyncio.wait_for(self.checks[name](), self.timeouts[name])
        except TimeoutError:
            return False, f"no answer within {self.timeouts[name]:g}s"
        except Exception as e:
            return False, f"{type(e).__name__}: {e}"

    def start(self) -> None:
        if self.readiness and self.checks and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.run_checks()
            await asyncio.sleep(CHECK_INTERVAL_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for cleanup in self.cleanups:
            with contextlib.suppress(Exception):
                await cleanup()


# ---------------------------------------------------------------------------- built-in checks
def redis_target_of(cfg: Config) -> RedisTarget | None:
    """The Redis readiness pings: the rate-limit store, else the session store."""
    return ratelimit_target(cfg) or session_target(cfg)


def add_configured_checks(health: Health, cfg: Config) -> None:
    """Register the checks `observability.health_checks` turns on."""
    hc = cfg.observability.health_checks
    if not hc.readiness_enabled:
        return
    if hc.check_redis:
        target = redis_target_of(cfg)
        if target is None:

            async def no_redis() -> tuple[bool, str]:
                return True, "skipped: no redis_url configured (limits and sessions are in memory)"

            health.register("redis", no_redis)
        else:
            timeout_s = (cfg.rate_limiting.timeout_ms if cfg.rate_limiting is not None else 100) / 1000
            check, close = redis_check(target, timeout_s)
            health.register("redis", check, timeout=max(timeout_s, 0.05))
            health.cleanups.append(close)
    if hc.check_upstreams:
        for up in cfg.upstreams:
            health.register(
                f"upstream:{up.id}", upstream_check(up), timeout=min(up.connect_timeout_secs, 2.0)
            )


def redis_check(target: RedisTarget | str, timeout_s: float) -> tuple[Check, Callable[[], Awaitable[None]]]:
    """PING through a shared-client instance of our own (one connection, no events: the
    features log their own), bounded by the limit timeout."""
    if not isinstance(target, RedisTarget):
        target = RedisTarget(target)
    client = RedisClient(target, max(timeout_s, 0.05), breaker=False)

    async def check() -> tuple[bool, str]:
        if await client.ping():
            return True, "PONG"
        return False, f"no PONG from {target}" + (f" ({client.last_error})" if client.last_error else "")

    return check, client.close


def upstream_check(up: UpstreamConfig) -> Check:
    """Ready when any of the upstream's targets is (`target_check`)."""
    checks = [target_check(up, t.url) for t in up.target_list]
    if len(checks) == 1:
        return checks[0]

    async def any_target() -> tuple[bool, str]:
        details = []
        for check in checks:
            try:
                ok, detail = await check()
            except OSError as e:
                ok, detail = False, e.strerror or repr(e)[:200]
            if ok:
                return True, detail
            details.append(detail)
        return False, "; ".join(details)

    return any_target


def target_check(up: UpstreamConfig, url: str) -> Check:
    """GET health_path (2xx or 3xx is healthy), or else a TCP (and TLS) connect."""
    pool = UpstreamPool(
        url, max_idle=0, connect_timeout=up.connect_timeout_secs, verify_tls=up.verify_tls, ca_path=up.ca_path
    )

    async def check() -> tuple[bool, str]:
        return await probe(pool, up.health_path)

    return check
