"""The composition root: the one module that imports every feature package.

`Server` builds a worker from a `Config` — the listener's state, one pool per upstream,
the filters the configuration turns on (Kong's plugin list, `build_filters`), the
gateway's `App` (the request's journey), the metrics listener, telemetry and the log
pipeline — then starts, drains and stops them. Nothing below this module knows which
features exist: the gateway sees a list of filters, the listener a handler.

Lifecycle order (each filter's `start()`/`close()` is the filter contract's):
start: log pipeline (so every later event goes through it) -> filters -> proxy listener
-> metrics listener -> telemetry. shutdown: stop accepting -> drain (up to
drain_timeout_secs) -> close pools -> metrics listener -> telemetry -> filters -> logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from typing import Final

from apigate.config.schema import Config
from apigate.gateway.app import App
from apigate.gateway.balancer import build_upstreams
from apigate.gateway.filters import Filter
from apigate.http.client import UpstreamPool
from apigate.http.server import Limits, ServerState, make_protocol_factory
from apigate.logs import events
from apigate.logs.pipeline import Pipeline, worker_index
from apigate.telemetry.admin import AdminApp
from apigate.telemetry.health import Health
from apigate.telemetry.runtime import Telemetry

# The metrics listener serves scrapes and probes: a few connections, small requests.
ADMIN_LIMITS: Final = Limits(
    max_connections=64, idle_timeout=30, request_timeout=10, max_header_bytes=16384, max_body_bytes=1024
)


def build_filters(cfg: Config, health: Health | None = None) -> list[Filter]:
    """The filters a configuration turns on, in one place; `App` orders them by priority
    and adds correlation (X-Request-ID), which is always on. Each feature's package is
    imported only when it is configured (PyJWT, OpenTelemetry load only when used)."""
    filters: list[Filter] = []
    if cfg.auth is not None:
        from apigate.auth.filter import AuthFilter

        filters.append(AuthFilter(cfg))  # priority 1250
    if cfg.rate_limiting is not None or any(r.rate_limit for r in cfg.routes):
        from apigate.ratelimit.filter import RateLimitFilter

        filters.append(RateLimitFilter(cfg))  # priority 910
    from apigate.logs.filter import AccessLogFilter, wanted

    if wanted(cfg):
        filters.append(AccessLogFilter(cfg))  # on_complete only
    obs = cfg.observability
    from apigate.telemetry.filter import HealthFilter, MetricsFilter

    if health is not None and (obs.health_checks.liveness_enabled or obs.health_checks.readiness_enabled):
        filters.append(HealthFilter(health))  # joins only routes whose pattern covers /health/*
    if obs.metrics_enabled:
        filters.append(MetricsFilter())  # on_complete only
    if obs.tracing.enabled:
        from apigate.telemetry.tracing import Tracing, TracingFilter

        filters.append(TracingFilter(Tracing(obs.tracing)))
    return filters


def build_pools(cfg: Config) -> dict[str, UpstreamPool]:
    """The first target's pool of each upstream (all of them: `build_upstreams`)."""
    return build_upstreams(cfg.upstreams)[0]


def server_limits(cfg: Config) -> Limits:
    s = cfg.server
    return Limits(
        max_connections=s.max_connections,
        idle_timeout=s.connection_timeout_secs,
        request_timeout=s.request_timeout_secs,
        max_header_bytes=s.max_header_bytes,
        max_body_bytes=s.max_body_bytes,
        allow_underscores=s.allow_underscores_in_headers,
    )


class Server:
    """One worker: everything the configuration describes, started and stopped in order."""

    def __init__(self, cfg: Config, filters: list[Filter] | None = None) -> None:
        """`filters` defaults to what the configuration turns on (`build_filters`)."""
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.state = ServerState(server_limits(cfg))
        hc = cfg.observability.health_checks
        self.health = Health(self.state, hc.liveness_enabled, hc.readiness_enabled)
        self.pools, groups, self.upstreams = build_upstreams(cfg.upstreams)
        if filters is None:
            filters = build_filters(cfg, self.health)
        self.app = App(cfg.routes, [*filters, self.upstreams], self.pools, self.health.answer, groups)
        if groups:
            self.health.details["upstreams"] = self.upstreams.readiness
        self.state.on_rejected = self.app.rejected
        self.logs: Pipeline | None = None  # built in start(): it needs the worker's loop
        self.telemetry = Telemetry(cfg, self.state, self.health, self.app.filters, lambda: self.logs)
        self.servers: list[asyncio.Server] = []
        self.admin_server: asyncio.Server | None = None
        self.started_filters: list[Filter] = []

    @property
    def filters(self) -> list[Filter]:
        return self.app.filters

    def ssl_context(self) -> ssl.SSLContext | None:
        tls = self.cfg.server.tls
        if tls is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls.cert_path, tls.key_path)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def start(self, reuse_port: bool = False) -> None:
        s = self.cfg.server
        # The log pipeline first, so that every event from here on goes through it.
        worker = worker_index()
        self.logs = Pipeline.from_config(self.cfg.logging, worker)
        await self.logs.start()
        events.attach(self.logs, take_early=not worker)
        for f in self.filters:
            await f.start()
            self.started_filters.append(f)
        sslctx = self.ssl_context()
        factory = make_protocol_factory(self.app.handle, self.state, "https" if sslctx else "http")
        server = await self.loop.create_server(
            factory, s.bind_address, s.port, ssl=sslctx, reuse_port=reuse_port or None, backlog=4096
        )
        self.servers.append(server)
        events.emit(
            "INFO",
            "server",
            "listener_started",
            "Listener started",
            address=f"{s.bind_address}:{s.port}",
            tls=sslctx is not None,
        )
        obs = self.cfg.observability
        if obs.metrics_enabled:
            # The metrics listener stays open while draining: readiness must say 503 then.
            admin = AdminApp(self.state, self.health, obs.metrics_enabled)
            host = obs.metrics_bind_address or s.bind_address
            self.admin_server = await self.loop.create_server(
                make_protocol_factory(admin.handle, ServerState(ADMIN_LIMITS), "http"),
                host,
                obs.metrics_port,
                reuse_port=reuse_port or None,
            )
            events.emit(
                "INFO",
                "telemetry",
                "listener_started",
                "Metrics listener started",
                address=f"{host}:{obs.metrics_port}",
            )
        await self.telemetry.start()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (up to drain_timeout), then close."""
        for server in self.servers:
            server.close()
        self.state.drain()
        deadline = self.loop.time() + self.cfg.server.drain_timeout_secs
        while self.state.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.state.connections):
            conn.transport.abort()
        for pool in self.upstreams.pools():
            pool.close()
        if self.admin_server is not None:
            self.admin_server.close()
        await self.telemetry.stop()
        await self.close_filters()
        events.emit("INFO", "server", "listener_stopped", "Listener stopped", address=self.address)
        if self.logs is not None:
            # SIGTERM flushes every sink within the drain timeout; what is left is spooled.
            await self.logs.close(max(1.0, deadline - self.loop.time()))
            events.detach(self.logs)

    async def close_filters(self) -> None:
        """Close every started filter (Redis connections, the JWKS refresher, exporters);
        one that fails to close is logged and does not stop the others."""
        started, self.started_filters = self.started_filters, []
        for f in reversed(started):
            try:
                await f.close()
            except Exception as e:
                events.emit(
                    "WARN",
                    "server",
                    "filter_close_failed",
                    "A filter failed to close",
                    filter=f.name,
                    error=repr(e)[:200],
                )

    @property
    def address(self) -> str:
        s = self.cfg.server
        return f"{s.bind_address}:{s.port}"


async def serve(cfg: Config, reuse_port: bool = False) -> int:
    """Run one worker until SIGTERM/SIGINT, then drain; returns the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(cfg)
    try:
        await server.start(reuse_port=reuse_port)
    except BaseException:
        with contextlib.suppress(Exception):
            await server.close_filters()
        raise
    await stop.wait()
    await server.shutdown()
    return 0
