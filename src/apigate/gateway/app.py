"""Build everything from the Config, handle each request, start, drain and stop.

`App.handle` is the request's journey, top to bottom: parse the target, match a route,
run the route's filter chain (correlation, then auth and rate limits when configured),
forward to the upstream, answer locally when something fails, then `on_complete`.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final

from apigate.config.schema import Config
from apigate.gateway.context import RequestContext
from apigate.gateway.errors import error_body, error_headers
from apigate.gateway.filters import CorrelationFilter, Filter, FilterChain, Response
from apigate.gateway.paths import split_target
from apigate.gateway.plugins import build_filters
from apigate.gateway.proxy import Proxy
from apigate.gateway.router import Match, NoMatch, Router
from apigate.http.client import UpstreamError, UpstreamPool
from apigate.http.server import Limits, ServerState, make_protocol_factory
from apigate.logs import events
from apigate.telemetry.admin import AdminApp
from apigate.telemetry.health import Health
from apigate.telemetry.runtime import Telemetry

# The metrics listener serves scrapes and probes: a few connections, small requests.
ADMIN_LIMITS: Final = Limits(
    max_connections=64, idle_timeout=30, request_timeout=10, max_header_bytes=16384, max_body_bytes=1024
)

if TYPE_CHECKING:
    from apigate.http.server import RequestCycle
    from apigate.logs.pipeline import Pipeline

JSON: Final = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class App:
    def __init__(self, cfg: Config, filters: list[Filter] | None = None) -> None:
        """`filters` defaults to what the configuration turns on (gateway/plugins.py)."""
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        self.router = Router(cfg.routes)
        self.pools: dict[str, UpstreamPool] = {}
        self.timeouts: dict[str, float] = {}
        for up in cfg.upstreams:
            self.pools[up.id] = UpstreamPool(
                up.base_url,
                max_idle=up.pool_max_idle_per_host,
                connect_timeout=up.connect_timeout_secs,
                verify_tls=up.verify_tls,
                ca_path=up.ca_path,
            )
            self.timeouts[up.id] = up.timeout_secs
        if filters is None:
            filters = build_filters(cfg)
        chain_filters: list[Filter] = [CorrelationFilter(), *filters]
        for route in self.router.routes:
            route.chain = FilterChain([f for f in chain_filters if f.applies_to(route)])
            route.pool = self.pools[route.upstream_id]
            route.timeout = self.timeouts[route.upstream_id]
        self.unmatched_chain = FilterChain([f for f in chain_filters if f.applies_to(None)])
        s = cfg.server
        self.state = ServerState(
            Limits(
                max_connections=s.max_connections,
                idle_timeout=s.connection_timeout_secs,
                request_timeout=s.request_timeout_secs,
                max_header_bytes=s.max_header_bytes,
                max_body_bytes=s.max_body_bytes,
            )
        )
        hc = cfg.observability.health_checks
        self.health = Health(self.state, hc.liveness_enabled, hc.readiness_enabled)
        self.telemetry = Telemetry(cfg, self.state, self.health, chain_filters, lambda: self.logs)
        self.servers: list[asyncio.Server] = []
        self.admin_server: asyncio.Server | None = None
        self.logs: Pipeline | None = None  # built in start(): it needs the worker's loop
        self.proxy = Proxy(self._proxied)

    # ------------------------------------------------------------------ the request's journey
    def handle(self, cycle: RequestCycle) -> None:
        """Called by the listener for each request; ends with `_complete(ctx)`."""
        target = split_target(cycle.target)
        if target is None:
            cycle.keep_alive = False
            status, body = error_body("bad_request", None, "The request target is not a path.")
            cycle.send_response(status, error_headers(), body)
            cycle.complete()
            return
        path, query = target
        ctx = RequestContext(cycle, path, query, cycle.start)
        match = self.router.match(cycle.method, path)
        if type(match) is tuple:
            ctx.route = route = match[0]
            ctx.params = match[1]
            ctx.upstream_id = route.upstream_id
            ctx.chain = chain = route.chain
            outcome = chain.start_request(ctx)
            if outcome is None:
                # The terminal step for a matched route, inlined from _dispatch().
                path = path if route.passthrough else route.upstream_path(path, ctx.params)
                self.proxy.start(ctx, chain, route.pool, route.timeout, path.encode("latin-1"))
                return
        else:
            ctx.chain = self.unmatched_chain
            outcome = ctx.chain.start_request(ctx)
        if outcome is None:
            self._dispatch(ctx, match)
        elif type(outcome) is Response:
            self._reply(ctx, outcome)
        else:
            self._wait(ctx, match, outcome)  # type: ignore[arg-type]  # not a Response here

    def _wait(self, ctx: RequestContext, match: Match | NoMatch, outcome: Awaitable[Response | None]) -> None:
        """A filter must wait: continue when it is done. (Out of `handle`: compiled, the
        closures below would cost every request an environment object.)"""
        cycle = ctx.cycle
        if isinstance(outcome, asyncio.Future):
            # A filter's own future (a batched Redis check): a callback, not a task per request.
            fut = outcome
            fut.add_done_callback(lambda f: self._future_done(ctx, match, f))
            cycle.on_cancel = lambda: self._future_cancelled(ctx, fut)
        else:
            task = self.loop.create_task(self._after_filters(ctx, match, outcome))
            cycle.on_cancel = lambda: self._cancelled(ctx, task)

    def _future_done(
        self, ctx: RequestContext, match: Match | NoMatch, fut: asyncio.Future[Response | None]
    ) -> None:
        if fut.cancelled() or ctx.completed:
            return
        ctx.cycle.on_cancel = None
        error = fut.exception()
        if error is not None:
            events.emit("ERROR", "gateway", "filter_failed", "A filter failed", error=repr(error)[:200])
            ctx.cycle.keep_alive = False  # as for any internal_error (docs/HTTP.md)
            self._reply(ctx, Response.error_reply("internal_error", ctx))
        elif (outcome := fut.result()) is None:
            self._dispatch(ctx, match)
        else:
            self._reply(ctx, outcome)

    def _future_cancelled(self, ctx: RequestContext, fut: asyncio.Future[Response | None]) -> None:
        fut.cancel()
        self._complete(ctx)

    async def _after_filters(
        self, ctx: RequestContext, match: Match | NoMatch, pending: Awaitable[Response | None]
    ) -> None:
        try:
            outcome = await pending
        except asyncio.CancelledError:
            return
        ctx.cycle.on_cancel = None
        if outcome is None:
            self._dispatch(ctx, match)
        else:
            self._reply(ctx, outcome)

    def _cancelled(self, ctx: RequestContext, task: asyncio.Task[None]) -> None:
        task.cancel()
        self._complete(ctx)

    def _dispatch(self, ctx: RequestContext, match: Match | NoMatch) -> None:
        """The terminal step: proxy a matched route, answer anything else locally."""
        if type(match) is tuple:
            route = match[0]
            path = ctx.path if route.passthrough else route.upstream_path(ctx.path, ctx.params)
            self.proxy.start(ctx, ctx.chain, route.pool, route.timeout, path.encode("latin-1"))
        else:
            assert isinstance(match, NoMatch)
            self._reply(ctx, self._local(ctx, ctx.path, match.allow))

    def _proxied(self, ctx: RequestContext, error: UpstreamError | None) -> None:
        """The proxy is done with a request, successfully or not."""
        if error is not None:
            ctx.upstream_failure = error.reason
            cycle = ctx.cycle
            if cycle.response_started:
                cycle.keep_alive = False
                cycle.proto.abort_response()
            else:
                self._reply(ctx, Response.error_reply(error.code, ctx))
                return
        self._complete(ctx)

    def _complete(self, ctx: RequestContext) -> None:
        if ctx.completed:
            return
        ctx.completed = True
        cycle = ctx.cycle
        if not ctx.status:
            ctx.status = cycle.status or 499  # 499: the client went away (nginx's code)
        ctx.chain.run_complete(ctx)
        cycle.complete()

    def _local(self, ctx: RequestContext, path: str, allow: tuple[str, ...]) -> Response:
        health = self.health.answer(path)
        if health is not None:
            return Response(health[0], list(JSON), health[1])
        if allow:
            return Response.error_reply(
                "method_not_allowed", ctx, [(b"allow", ", ".join(allow).encode("ascii"))]
            )
        return Response.error_reply("not_found", ctx)

    def _reply(self, ctx: RequestContext, reply: Response) -> None:
        """Answer locally (an error or a filter's reply), through the response filters."""
        cycle = ctx.cycle
        if not cycle.response_started and not cycle.proto.closing:
            headers = list(reply.headers)
            if ctx.response_headers:
                headers.extend(ctx.response_headers)
            ctx.chain.run_response(ctx, reply.status, headers)
            ctx.status = reply.status
            ctx.error = reply.error
            cycle.send_response(reply.status, headers, reply.body)
        self._complete(ctx)

    # ------------------------------------------------------------------ lifecycle
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
        from apigate.logs.pipeline import Pipeline, worker_index

        worker = worker_index()
        self.logs = Pipeline.from_config(self.cfg.logging, worker)
        await self.logs.start()
        events.attach(self.logs, take_early=not worker)
        sslctx = self.ssl_context()
        factory = make_protocol_factory(self.handle, self.state, "https" if sslctx else "http")
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
            admin_state = ServerState(ADMIN_LIMITS)
            self.admin_server = await self.loop.create_server(
                make_protocol_factory(admin.handle, admin_state, "http"),
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
        for pool in self.pools.values():
            pool.close()
        if self.admin_server is not None:
            self.admin_server.close()
        await self.telemetry.stop()
        events.emit("INFO", "server", "listener_stopped", "Listener stopped", address=self.address)
        if self.logs is not None:
            # SIGTERM flushes every sink within the drain timeout; what is left is spooled.
            await self.logs.close(max(1.0, deadline - self.loop.time()))
            events.detach(self.logs)

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
    app = App(cfg)
    await app.start(reuse_port=reuse_port)
    await stop.wait()
    await app.shutdown()
    return 0
