"""Build everything from the Config, handle each request, start, drain and stop.

`App.handle` is the request's journey, top to bottom: parse the target, match a route,
run the route's filter chain (correlation, then auth and rate limits when configured),
forward to the upstream, answer locally when something fails, then `on_complete`.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from typing import TYPE_CHECKING

import orjson

from apigate.config.schema import Config
from apigate.gateway.context import RequestContext
from apigate.gateway.errors import error_body, error_headers
from apigate.gateway.filters import CorrelationFilter, Filter, FilterChain, Response
from apigate.gateway.paths import split_target
from apigate.gateway.proxy import forward
from apigate.gateway.router import Match, Router
from apigate.http.body import ClientDisconnected
from apigate.http.client import UpstreamError, UpstreamPool
from apigate.http.server import Limits, ServerState, make_protocol_factory
from apigate.logs import events

if TYPE_CHECKING:
    from apigate.http.server import RequestCycle

HEALTH_LIVE = "/health/live"
HEALTH_READY = "/health/ready"
JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class App:
    def __init__(self, cfg: Config, filters: list[Filter] | None = None) -> None:
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
        chain_filters: list[Filter] = [CorrelationFilter(), *(filters or [])]
        for route in self.router.routes:
            route.chain = FilterChain([f for f in chain_filters if f.applies_to(route)])
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
        self.health_live = hc.liveness_enabled
        self.health_ready = hc.readiness_enabled
        self.servers: list[asyncio.Server] = []

    # ------------------------------------------------------------------ the request's journey
    async def handle(self, cycle: RequestCycle) -> None:
        start = self.loop.time()
        target = split_target(cycle.target)
        if target is None:
            cycle.keep_alive = False
            status, body = error_body("bad_request", None, "The request target is not a path.")
            cycle.send_response(status, error_headers(), body)
            return
        path, query = target
        ctx = RequestContext(cycle, path, query, start)
        match = self.router.match(cycle.method, path)
        if isinstance(match, Match):
            route = match.route
            ctx.route = route
            ctx.params = match.params
            ctx.upstream_id = route.upstream_id
            chain: FilterChain = route.chain  # type: ignore[assignment]
        else:
            route = None
            chain = self.unmatched_chain
        try:
            reply = await chain.run_request(ctx)
            if reply is None:
                if route is not None:
                    reply = await self._proxy(ctx, chain)
                else:
                    reply = self._local(ctx, path, match.allow if not isinstance(match, Match) else ())
            if reply is not None:
                self._reply(ctx, chain, reply)
        finally:
            if not ctx.status:
                ctx.status = cycle.status or 499  # 499: the client went away (nginx's code)
            chain.run_complete(ctx)

    async def _proxy(self, ctx: RequestContext, chain: FilterChain) -> Response | None:
        route = ctx.route
        assert route is not None
        upstream_id = route.upstream_id
        cycle = ctx.cycle
        upstream_path = route.upstream_path(ctx.path, ctx.params).encode("latin-1")
        try:
            await forward(ctx, chain, self.pools[upstream_id], upstream_path, self.timeouts[upstream_id])
        except UpstreamError as e:
            ctx.upstream_failure = e.reason
            if cycle.response_started:
                cycle.keep_alive = False
                cycle.proto.abort_response()
                return None
            return Response.error_reply(e.code, ctx)
        except ClientDisconnected:
            return None
        return None

    def _local(self, ctx: RequestContext, path: str, allow: tuple[str, ...]) -> Response:
        if path == HEALTH_LIVE and self.health_live:
            return Response(200, list(JSON), b'{"status":"ok"}')
        if path == HEALTH_READY and self.health_ready:
            if self.state.draining:
                return Response(503, list(JSON), orjson.dumps({"status": "draining"}))
            return Response(200, list(JSON), b'{"status":"ready"}')
        if allow:
            return Response.error_reply(
                "method_not_allowed", ctx, [(b"allow", ", ".join(allow).encode("ascii"))]
            )
        return Response.error_reply("not_found", ctx)

    def _reply(self, ctx: RequestContext, chain: FilterChain, reply: Response) -> None:
        cycle = ctx.cycle
        if cycle.response_started or cycle.proto.closing:
            return
        headers = list(reply.headers)
        if ctx.response_headers:
            headers.extend(ctx.response_headers)
        chain.run_response(ctx, reply.status, headers)
        ctx.status = reply.status
        ctx.error = reply.error
        cycle.send_response(reply.status, headers, reply.body)

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
        events.emit("INFO", "server", "listener_stopped", "Listener stopped", address=self.address)

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
