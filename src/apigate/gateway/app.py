"""The request's journey, top to bottom (`App.handle`).

Parse the target, match a route, run the route's filter chain (correlation, then auth,
rate limits and whatever else is configured), forward to the upstream (the proxy is the
terminal step), answer locally when something fails, and end every request through
`finish(ctx)`, which runs the `on_complete` filters (metrics, the access event).

`App` is built by the composition root (apigate/server.py) from the configuration's
routes, the filters it turned on and one pool per upstream; it knows no feature package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from apigate.config.schema import RouteConfig
from apigate.gateway.balancer import UpstreamGroup
from apigate.gateway.correlation import CorrelationFilter
from apigate.gateway.filters import Filter, FilterChain, RequestContext, Response, finish
from apigate.gateway.paths import decoded_slashes, split_target
from apigate.gateway.proxy import IDEMPOTENT, Proxy, RetryableStatus
from apigate.gateway.router import Match, NoMatch, Route, Router
from apigate.gateway.tunnel import Tunnels, refuse, wants_websocket
from apigate.http.client import ConnectFailed, ConnectionReset, ConnectTimeout, UpstreamError, UpstreamPool
from apigate.http.errors import error_body, error_headers, json_headers
from apigate.http.headers import decode_fields
from apigate.logs import events

if TYPE_CHECKING:
    from apigate.http.server import RequestCycle

_BAD_TARGET: Final = NoMatch((), "bad_request", "The request target is not a path.")
_ESCAPED_SLASH: Final = NoMatch(
    (),
    "bad_request",
    "The path contains an encoded '/' or '\\', or a dot-segment with parameters"
    " (docs/SECURITY.md, path policy).",
)

LocalAnswers = Callable[[str], "tuple[int, bytes] | None"]
"""Answers the gateway gives itself for a path no route serves (the health endpoints):
(status, JSON body), or None."""


class App:
    def __init__(
        self,
        routes: Sequence[RouteConfig],
        filters: Sequence[Filter],
        pools: Mapping[str, UpstreamPool],
        local_answers: LocalAnswers | None = None,
        websocket_idle_timeout: float = 300.0,
        groups: Mapping[str, UpstreamGroup] | None = None,
    ) -> None:
        """`filters`: the configured ones (correlation is added here, always first);
        `pools`: one per upstream id, each with its `timeout`; `groups`: the upstreams
        whose requests pick a target (several targets, health, breaker or retries)."""
        self.loop = asyncio.get_running_loop()
        self.router = Router(routes)
        # WebSocket tunnels (gateway/tunnel.py): a filter for its lifecycle and metrics only.
        self.tunnels = Tunnels(self._reply, websocket_idle_timeout)
        self.filters: list[Filter] = [CorrelationFilter(), *filters, self.tunnels]
        # The compiled route table, by Route.index: what runs for each route.
        self.chains = [FilterChain([f for f in self.filters if f.applies_to(r)]) for r in self.router.routes]
        self.route_pools = [pools[r.upstream_id] for r in self.router.routes]
        self.groups: Mapping[str, UpstreamGroup] = groups or {}
        self.route_groups = [self.groups.get(r.upstream_id) for r in self.router.routes]
        for group in self.groups.values():
            if group.retry_on & {"status_502", "status_503"}:
                for target in group.targets:
                    target.pool.retry_status = self._retry_status
        self.unmatched_chain = FilterChain([f for f in self.filters if f.applies_to(None)])
        self.local_answers = local_answers
        self.proxy = Proxy(self._proxied)

    # ------------------------------------------------------------------ the request's journey
    def handle(self, cycle: RequestCycle) -> None:
        """Called by the listener for each request; every path ends in `finish(ctx)`."""
        target = split_target(cycle.target)
        match: Match | NoMatch
        if target is None:
            # Logged and counted like any answer: the path as it came, bounded.
            cycle.keep_alive = False
            raw, _, rest = cycle.target[:1024].partition(b"?")
            ctx = RequestContext(cycle, raw.decode("latin-1"), b"?" + rest if rest else b"", cycle.start)
            match = _BAD_TARGET
        else:
            path, query, ambiguous = target
            ctx = RequestContext(cycle, path, query, cycle.start)
            match = self.router.match(cycle.method, path)
            if ambiguous:
                match = self._escaped(cycle.method, path, match)
        if type(match) is tuple:
            route = match[0]
            ctx.route = route
            ctx.params = match[1]
            ctx.upstream_id = route.upstream_id
            ctx.chain = chain = self.chains[route.index]
            ctx.pool = self.route_pools[route.index]
        else:
            ctx.chain = chain = self.unmatched_chain
        if cycle.dropped_header is not None:
            self._dropped(ctx, cycle.dropped_header)
        outcome = chain.start_request(ctx)
        if outcome is None:
            self._dispatch(ctx, match)
        elif type(outcome) is Response:
            self._reply(ctx, outcome)
        else:
            self._wait(ctx, match, outcome)  # type: ignore[arg-type]  # not a Response here

    def _dispatch(self, ctx: RequestContext, match: Match | NoMatch) -> None:
        """The terminal step: proxy a matched route, answer anything else locally."""
        if type(match) is tuple:
            route = match[0]
            if ctx.pool.watched:  # a balanced upstream: pick its target
                group = self.route_groups[route.index]
                assert group is not None
                pool = group.pick()
                if pool is None:
                    self._reply(ctx, _unavailable(ctx))
                    return
                ctx.pool = pool
            path = ctx.path if route.passthrough else route.upstream_path(ctx.path, ctx.params)
            if ctx.cycle.upgrade and wants_websocket(ctx.cycle.headers):
                if route.config.websocket:
                    self.tunnels.start_tunnel(ctx, path.encode("latin-1"))
                else:
                    self._reply(ctx, refuse(ctx))
                return
            self.proxy.start(ctx, path.encode("latin-1"))
        else:
            assert isinstance(match, NoMatch)
            if match.error is not None:
                status, body = error_body(match.error, ctx.request_id, match.message)
                self._reply(ctx, Response(status, error_headers(), body, match.error))
            else:
                self._reply(ctx, self._local(ctx, match.allow))

    def _dropped(self, ctx: RequestContext, name: bytes) -> None:
        """server.allow_underscores_in_headers is false: say so at DEBUG (nginx logs nothing,
        which makes a vanished header hard to explain)."""
        events.emit(
            "DEBUG",
            "gateway",
            "header_dropped",
            "A request header with '_' in its name was dropped (server.allow_underscores_in_headers)",
            header=name[:64].decode("latin-1"),
            path=ctx.path,
        )

    def _escaped(self, method: str, path: str, match: Match | NoMatch) -> Match | NoMatch:
        """The path policy for an encoded slash (docs/SECURITY.md): refused, unless the
        route keeps them (`keep_encoded_slashes`) and the path, decoded and normalised as
        an upstream might, would still reach the same route. Only then is it forwarded
        as it came (Envoy's path_with_escaped_slashes_action, KEEP_UNCHANGED per route)."""
        if type(match) is not tuple:
            return _ESCAPED_SLASH
        route: Route = match[0]
        if not route.config.keep_encoded_slashes:
            return _ESCAPED_SLASH
        decoded = decoded_slashes(path)
        if decoded is None:
            return _ESCAPED_SLASH
        again = self.router.match(method, decoded)
        if type(again) is not tuple or again[0] is not route:
            return _ESCAPED_SLASH
        return match

    def _wait(self, ctx: RequestContext, match: Match | NoMatch, outcome: Awaitable[Response | None]) -> None:
        """A filter must wait: the chain resumes from the done-callback of one future.

        A filter's own future (the rate limiter's batched Redis check) is used as it is: no
        task per request. Anything else awaitable runs in a task. (Out of `handle`:
        compiled, these closures would cost every request an environment object.)
        """
        fut = outcome if isinstance(outcome, asyncio.Future) else asyncio.ensure_future(outcome)
        fut.add_done_callback(lambda f: self._resumed(ctx, match, f))
        ctx.cycle.on_cancel = lambda: self._abandoned(ctx, fut)

    def _resumed(
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

    def _abandoned(self, ctx: RequestContext, fut: asyncio.Future[Response | None]) -> None:
        """The listener gave up while a filter waited (deadline, client gone)."""
        fut.cancel()
        finish(ctx)

    def _proxied(self, ctx: RequestContext, error: UpstreamError | None) -> None:
        """The proxy is done with a request, successfully or not."""
        if ctx.pool.watched and self._balanced(ctx, error):
            return  # sent again, to another target
        if error is not None:
            ctx.upstream_failure = error.reason
            cycle = ctx.cycle
            if cycle.response_started:
                cycle.keep_alive = False
                cycle.proto.abort_response()
            else:
                self._reply(ctx, Response.error_reply(error.code, ctx))
                return
        finish(ctx)

    def _balanced(self, ctx: RequestContext, error: UpstreamError | None) -> bool:
        """A request to a balanced target ended: tell its breaker, and retry it on another
        target when the upstream's `retries` allow it (True: it was sent again)."""
        group = self.groups.get(ctx.upstream_id or "")
        if group is None:
            return False
        pool = ctx.pool
        count_5xx = group.cfg.circuit_breaker is not None and group.cfg.circuit_breaker.count_5xx
        if error is None:
            if ctx.status:  # 0: the client left before any answer, nothing to judge
                group.report(pool, "5xx" if count_5xx and ctx.status >= 500 else None)
            return False
        if isinstance(error, RetryableStatus):
            group.report(pool, "5xx" if count_5xx else None)
            reason = f"status_{error.status}"  # already judged retryable (`_retry_status`)
        else:
            group.report(pool, error.reason)
            if isinstance(error, ConnectFailed | ConnectTimeout):
                reason = "connect_failure"
            elif isinstance(error, ConnectionReset) and ctx.method in IDEMPOTENT:
                reason = "reset_before_response"  # non-idempotent requests: connect failures only
            else:
                return False
            if not self._may_retry(ctx, group, reason):
                return False
        other = group.pick(exclude=pool)
        if other is None:
            return False
        group.retried(reason)
        ctx.attempts += 1
        ctx.pool = other
        route = ctx.route
        assert route is not None
        path = ctx.path if route.passthrough else route.upstream_path(ctx.path, ctx.params)
        self.proxy.start(ctx, path.encode("latin-1"))
        return True

    def _may_retry(self, ctx: RequestContext, group: UpstreamGroup, reason: str) -> bool:
        """Nothing of the response reached the client, the request (body included) can
        be sent again, attempts are left and the retry budget allows it."""
        cycle = ctx.cycle
        body = cycle.body
        return not (
            cycle.response_started
            or cycle.proto.closing
            or cycle.timed_out
            or (body is not None and body.received != body.size)  # some of it is gone
            or ctx.attempts >= (group.retries.attempts if group.retries is not None else 1)
            or not group.may_retry(reason)
        )

    def _retry_status(self, ctx: RequestContext, status: int) -> bool:
        """An upstream answered 502/503 (`UpstreamPool.retry_status`): retry it elsewhere?
        Only idempotent requests, and only when another target can take it."""
        group = self.groups.get(ctx.upstream_id or "")
        return (
            group is not None
            and ctx.method in IDEMPOTENT
            and group.has_other(ctx.pool)
            and self._may_retry(ctx, group, f"status_{status}")
        )

    def _local(self, ctx: RequestContext, allow: tuple[str, ...]) -> Response:
        if self.local_answers is not None:
            answer = self.local_answers(ctx.path)
            if answer is not None:
                return Response(answer[0], json_headers(), answer[1])
        if allow:
            return Response.error_reply(
                "method_not_allowed", ctx, [(b"allow", ", ".join(allow).encode("ascii"))]
            )
        return Response.error_reply("not_found", ctx)

    def rejected(self, cycle: RequestCycle, code: str) -> None:
        """The listener answered on its own (`ServerState.on_rejected`: a malformed head,
        431, 408, 503 overloaded): record it like any answer, route `unmatched`, through
        the `on_complete` filters (metrics, the access event). The listener has already
        answered and closes the connection; nothing here writes or completes the cycle."""
        raw, _, rest = cycle.target[:1024].partition(b"?")
        ctx = RequestContext(cycle, raw.decode("latin-1") or "-", b"?" + rest if rest else b"", cycle.start)
        ctx.chain = chain = self.unmatched_chain
        ctx.status = cycle.status
        ctx.error = code
        ctx.completed = True
        chain.run_complete(ctx)

    def _reply(self, ctx: RequestContext, reply: Response) -> None:
        """Answer locally (an error or a filter's reply), through the response filters."""
        cycle = ctx.cycle
        if not cycle.response_started and not cycle.proto.closing:
            headers = list(reply.headers)
            if ctx.response_headers:
                headers.extend(ctx.response_headers)
            ctx.chain.run_response(ctx, reply.status, headers)
            if ctx.response_fields is not None:
                headers.extend(decode_fields(ctx.response_fields))
            ctx.status = reply.status
            ctx.error = reply.error
            cycle.send_response(reply.status, headers, reply.body)
        finish(ctx)


def _unavailable(ctx: RequestContext) -> Response:
    """Every target of the upstream is out (health checks, open circuits): 503 at once,
    rather than piling up connect timeouts."""
    _, body = error_body(
        "upstream_unavailable", ctx.request_id, "No target of the upstream service is available."
    )
    ctx.upstream_failure = "unavailable"
    return Response(503, error_headers(), body, "upstream_unavailable")
