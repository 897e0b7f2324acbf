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
import gc
import ipaddress
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from apigate.config import ConfigError, load_config
from apigate.config.schema import Config, config_hash
from apigate.gateway.app import App
from apigate.gateway.balancer import build_upstreams
from apigate.gateway.filters import Filter
from apigate.http.client import UpstreamPool
from apigate.http.server import HttpServerProtocol, Limits, ServerState, make_protocol_factory
from apigate.logs import events
from apigate.logs.pipeline import Pipeline, worker_index
from apigate.telemetry import metrics
from apigate.telemetry.admin import AdminApp
from apigate.telemetry.health import Health, add_configured_checks
from apigate.telemetry.runtime import Telemetry
from apigate.telemetry.status import status_page

if TYPE_CHECKING:
    from apigate.http.server import RequestCycle

# Per-target gauges, rebuilt from the new targets at the next scrape after a reload.
_TARGET_GAUGES: Final = (
    metrics.UPSTREAM_TARGET_HEALTHY,
    metrics.UPSTREAM_CIRCUIT_STATE,
    metrics.UPSTREAM_REQUESTS_IN_FLIGHT,
    metrics.UPSTREAM_POOL_CONNECTIONS,
)

# The metrics listener serves scrapes and probes: a few connections, small requests.
ADMIN_LIMITS: Final = Limits(
    max_connections=64, idle_timeout=30, request_timeout=10, max_header_bytes=16384, max_body_bytes=1024
)


def build_filters(cfg: Config, health: Health | None = None) -> list[Filter]:
    """The filters a configuration turns on, in one place; `App` orders them by priority
    and adds correlation (X-Request-ID), which is always on. Each feature's package is
    imported only when it is configured (PyJWT, OpenTelemetry load only when used)."""
    filters: list[Filter] = []
    from apigate.iprules.filter import has_rules

    if has_rules(cfg):
        from apigate.iprules.filter import IpRulesFilter

        filters.append(IpRulesFilter(cfg))  # priority 3000, routes with rules only
    from apigate.cors.filter import wanted as cors_wanted

    if cors_wanted(cfg):
        from apigate.cors.filter import CorsFilter

        filters.append(CorsFilter(cfg))  # priority 2000, CORS routes (and unmatched preflights) only
    if cfg.auth is not None:
        from apigate.auth.filter import AuthFilter

        filters.append(AuthFilter(cfg))  # priority 1250
    if cfg.rate_limiting is not None or any(r.rate_limit for r in cfg.routes):
        from apigate.ratelimit.filter import RateLimitFilter

        filters.append(RateLimitFilter(cfg))  # priority 910
    if any(r.request_headers or r.response_headers for r in cfg.routes):
        from apigate.transforms.filter import HeaderTransformFilter

        filters.append(HeaderTransformFilter(cfg))  # priority 700, routes with transforms only
    if cfg.plugins:
        from apigate.plugins.loader import build_plugins

        filters.extend(build_plugins(cfg))  # user filters, each behind a guard (docs/PLUGINS.md)
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

    def __init__(
        self, cfg: Config, filters: list[Filter] | None = None, config_path: str | None = None
    ) -> None:
        """`filters` defaults to what the configuration turns on (`build_filters`);
        `config_path`: the file `reload()` reads again."""
        self.cfg = cfg
        self.config_path = config_path
        self.reloading = asyncio.Lock()
        self.retiring: set[asyncio.Task[None]] = set()  # old filters waiting for their requests
        self.loop = asyncio.get_running_loop()
        self.state = ServerState(server_limits(cfg))
        hc = cfg.observability.health_checks
        self.health = Health(self.state, hc.liveness_enabled, hc.readiness_enabled)
        self.pools, groups, self.upstreams = build_upstreams(cfg.upstreams)
        if filters is None:
            filters = build_filters(cfg, self.health)
        self.app = App(
            cfg.routes,
            [*filters, self.upstreams],
            self.pools,
            self.health.answer,
            cfg.server.websocket_idle_timeout_secs,
            groups,
        )
        if groups:
            self.health.details["upstreams"] = self.upstreams.readiness
        self.state.on_rejected = self.app.rejected
        self.logs: Pipeline | None = None  # built in start(): it needs the worker's loop
        self.telemetry = Telemetry(cfg, self.state, self.health, self.app.filters, lambda: self.logs)
        self.servers: list[asyncio.Server] = []
        self.admin_server: asyncio.Server | None = None
        self.admin: AdminApp | None = None
        self.started_filters: list[Filter] = []
        self.scheme = "http"

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
        self.scheme = "https" if sslctx else "http"
        # The handler is read when a connection opens (a reload swaps `self.app`), and a
        # reload re-points the open connections: nothing extra per request.
        factory: Callable[[], Any] = lambda: HttpServerProtocol(self.app.handle, self.state, self.scheme)  # noqa: E731
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
            host = obs.metrics_bind_address or s.bind_address
            self.admin = admin = AdminApp(
                self.state,
                self.health,
                obs.metrics_enabled,
                *status_page(self.cfg, self.health, host),
                reload=self.admin_reload(host),
            )
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
        self.app.tunnels.going_away()  # WebSocket tunnels still open: a 1001 close frame each
        for conn in list(self.state.connections):
            conn.transport.abort()
        for pool in self.upstreams.pools():
            pool.close()
        for task in list(self.retiring):  # their requests are done or cut by now
            with contextlib.suppress(Exception):
                await task
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
        await close_all(started)

    # ------------------------------------------------------------------ hot reload
    async def reload(self) -> tuple[bool, list[str]]:
        """Read the configuration file again and serve new requests with it.

        Valid: new filters (auth keys, limits), pools and routes are built and started
        beside the old ones, then swapped in; requests in flight finish on what they
        started with, and the old filters and pools are closed once they have (within
        drain_timeout_secs). Invalid: every error is logged, nothing changes.
        Returns (success, errors)."""
        async with self.reloading:
            return await self._reload()

    async def _reload(self) -> tuple[bool, list[str]]:
        if self.config_path is None:
            return self._refused(
                ["no configuration file to reload (the gateway was started without --config)"]
            )
        try:
            cfg = load_config(self.config_path)
        except ConfigError as e:
            return self._refused(e.errors)
        except OSError as e:
            return self._refused([f"{self.config_path}: {e.strerror or e}"])
        pools, groups, upstreams = build_upstreams(cfg.upstreams)
        filters = [*build_filters(cfg, self.health), upstreams]
        started: list[Filter] = []
        try:
            app = App(
                cfg.routes, filters, pools, self.health.answer, cfg.server.websocket_idle_timeout_secs, groups
            )
            for f in app.filters:
                await f.start()
                started.append(f)
        except Exception as e:
            await close_all(started)
            for pool in upstreams.pools():
                pool.close()
            return self._refused([f"starting the new configuration failed: {repr(e)[:200]}"])
        restart = _needs_restart(self.cfg, cfg)
        if cfg.logging != self.cfg.logging:
            await self._reload_logs(cfg)
        old_app, old_filters, old_upstreams = self.app, self.started_filters, self.upstreams
        # The swap: nothing awaits between these lines, so every request sees one config.
        self.cfg = cfg
        self.app = app
        self.pools = pools
        self.upstreams = upstreams
        self.started_filters = started
        self.state.on_rejected = app.rejected
        self.telemetry.filters = app.filters
        if groups:
            self.health.details["upstreams"] = upstreams.readiness
        else:
            self.health.details.pop("upstreams", None)
        if "server" not in restart:
            self.state.limits = server_limits(cfg)  # for connections opened from now on
        in_flight = []
        for conn in self.state.connections:
            conn.handler = app.handle
            if conn.active is not None:
                in_flight.append(conn.active)
        for gauge in _TARGET_GAUGES:  # a target the new configuration dropped must not linger
            gauge.series.clear()
        await self._reload_checks(cfg)
        if self.admin is not None and self.admin.status is not None:
            self.admin.status.reconfigure(cfg)  # routes, upstreams and hash as now served
        _hand_over_tunnels(old_app, app)  # open WebSockets stay open, owned by the new App
        task = self.loop.create_task(
            self._retire(old_app, old_filters, list(old_upstreams.pools()), in_flight)
        )
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)
        digest = config_hash(cfg)
        metrics.CONFIG_RELOADS.inc(("success",))
        events.emit(
            "INFO",
            "config",
            "config_reloaded",
            "Configuration reloaded",
            path=self.config_path,
            config_hash=digest,
            **({"restart_required": sorted(restart)} if restart else {}),
        )
        if restart:
            events.emit(
                "WARN",
                "config",
                "config_restart_required",
                "Some changed settings take effect only after a restart",
                sections=sorted(restart),
            )
        return True, []

    def _refused(self, errors: list[str]) -> tuple[bool, list[str]]:
        metrics.CONFIG_RELOADS.inc(("failure",))
        for error in errors:
            events.emit("ERROR", "config", "config_error", "Configuration error", error=error)
        events.emit(
            "ERROR",
            "config",
            "config_reload_failed",
            "Configuration reload refused; the old configuration keeps serving",
            path=self.config_path,
            errors=len(errors),
        )
        return False, errors

    async def _reload_logs(self, cfg: Config) -> None:
        """A new log pipeline (sinks, level, redaction): the old one is flushed and closed
        first, so that a file sink or the spool never has two writers."""
        old = self.logs
        events.configure(cfg.logging.level, cfg.logging.service, cfg.logging.format)
        new = Pipeline.from_config(cfg.logging, worker_index())
        if old is not None:
            events.detach(old)
            await old.close(2.0)
        await new.start()
        self.logs = new
        events.attach(new, take_early=False)

    async def _reload_checks(self, cfg: Config) -> None:
        """Readiness checks for the new configuration, run once before they answer."""
        health = self.health
        cleanups, health.cleanups = health.cleanups, []
        health.checks.clear()
        health.timeouts.clear()
        add_configured_checks(health, cfg)
        if health.checks:
            await health.run_checks()
        else:
            health.results = None
        health.start()
        for cleanup in cleanups:
            with contextlib.suppress(Exception):
                await cleanup()

    async def _retire(
        self,
        app: App,
        filters: list[Filter],
        pools: Iterable[UpstreamPool],
        in_flight: list[RequestCycle],
    ) -> None:
        """Close what the old configuration used once its requests are done."""
        deadline = self.loop.time() + self.cfg.server.drain_timeout_secs
        while any(not c.finished for c in in_flight) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        _hand_over_tunnels(app, self.app)  # those whose handshake ended since the swap
        await close_all(filters)
        for pool in pools:
            pool.close()

    def admin_reload(self, host: str) -> Callable[[], Awaitable[tuple[int, dict[str, object]]]] | None:
        """`POST /admin/reload` on the metrics listener, only when it listens on loopback.
        Under `server.workers`, the supervisor is asked (SIGHUP), so that every worker reloads."""
        if not _is_loopback(host):
            return None

        async def reload() -> tuple[int, dict[str, object]]:
            if os.environ.get("APIGATE_WORKER_INDEX") is not None:
                os.kill(os.getppid(), signal.SIGHUP)
                return 202, {"status": "reloading", "workers": self.cfg.server.workers}
            ok, errors = await self.reload()
            if ok:
                return 200, {"status": "reloaded", "config_hash": config_hash(self.cfg)}
            return 422, {"status": "refused", "errors": errors}

        return reload

    @property
    def address(self) -> str:
        s = self.cfg.server
        return f"{s.bind_address}:{s.port}"


async def close_all(filters: list[Filter]) -> None:
    """Close filters in reverse start order; one that fails is logged, the rest still close."""
    for f in reversed(filters):
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


def _hand_over_tunnels(old: App, new: App) -> None:
    """A reload must not close WebSocket tunnels: the old App's open ones move to the new
    App's `Tunnels` (its metrics, its going-away frame at shutdown)."""
    src, dst = old.tunnels, new.tunnels
    if src is dst:
        return
    for tunnel in src.open:
        tunnel.owner = dst
        dst.open.add(tunnel)
    src.open.clear()
    for route, n in src.total.items():
        dst.total[route] = dst.total.get(route, 0) + n
    src.total.clear()


def _needs_restart(old: Config, new: Config) -> set[str]:
    """Sections a reload cannot change in place: the listening sockets and processes."""
    changed = set()
    a, b = old.server, new.server
    if (a.bind_address, a.port, a.workers, a.tls) != (b.bind_address, b.port, b.workers, b.tls):
        changed.add("server")
    o, n = old.observability, new.observability
    if (o.metrics_enabled, o.metrics_port, o.metrics_bind_address, o.tracing) != (
        n.metrics_enabled,
        n.metrics_port,
        n.metrics_bind_address,
        n.tracing,
    ):
        changed.add("observability")
    return changed


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(cfg: Config, reuse_port: bool = False, config_path: str | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT, then drain; returns the exit code. SIGHUP
    reloads the configuration from `config_path`."""
    if config_path is not None and os.environ.get("APIGATE_CONFIG_RELOADED"):
        # A worker restarted after a reload: the file, as its siblings reloaded it (the
        # supervisor's copy is the configuration it started with); still the old one if
        # the file is invalid now.
        with contextlib.suppress(ConfigError, OSError):
            cfg = load_config(config_path)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(cfg, config_path=config_path)
    reloads: set[asyncio.Task[tuple[bool, list[str]]]] = set()

    def on_hangup() -> None:
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await server.start(reuse_port=reuse_port)
    except BaseException:
        with contextlib.suppress(Exception):
            await server.close_filters()
        raise
    # Everything built so far (config, routes, compiled modules, pydantic models) lives as
    # long as the worker: out of the collector's sight, a full collection no longer walks
    # it, which keeps those pauses out of the tail latency (docs/PERFORMANCE.md).
    gc.freeze()
    await stop.wait()
    await server.shutdown()
    return 0
