"""Header transforms (Kong's request-transformer and response-transformer, one filter).

A route's `request_headers` rewrite what the upstream receives, `response_headers` what
the client receives; each has `set` (replace every copy), `add` (one more copy) and
`remove`. Values are templates: `${VAR}` was expanded when the configuration was loaded,
`$client_ip` (the address as `server.trusted_proxies` resolve it), `$request_id`,
`$route_id` and `$user` (the authenticated subject, empty without one) are filled in per
request; `$$` is a literal `$`. Fields that frame the message or that the gateway sets
itself (hop-by-hop, Host, Content-Length, X-Forwarded-For, X-Request-ID, X-User-ID) are
refused by the configuration check.

The filter runs after auth and rate limits (priority 700), so `$user` is known and a
transform may remove the credentials before they reach the upstream. It joins only the
chains of routes that configure transforms: other routes pay nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable

from apigate.config.schema import TRANSFORM_TOKEN, Config, HeaderTransformConfig
from apigate.gateway.clientip import ClientIp
from apigate.gateway.filters import Filter, RequestContext, RequestOutcome
from apigate.gateway.router import Route
from apigate.http.headers import Headers, length_mask

Part = bytes | Callable[[RequestContext], bytes]  # a literal, or a per-request variable


class Template:
    """A header value: literal pieces and per-request variables, joined per request."""

    __slots__ = ("constant", "parts", "variable")

    def __init__(self, text: str, variables: dict[str, Part]) -> None:
        parts: list[Part] = []
        pos = 0
        for m in TRANSFORM_TOKEN.finditer(text):
            literal = text[pos : m.start()] + ("$" if m.group(1) is None else "")
            if literal:
                parts.append(literal.encode("latin-1"))
            if m.group(1) is not None:
                parts.append(variables[m.group(1)])
            pos = m.end()
        if text[pos:]:
            parts.append(text[pos:].encode("latin-1"))
        # Adjacent literals (a per-route variable is one) are joined once, here.
        merged: list[Part] = []
        for part in parts:
            if isinstance(part, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += part
            else:
                merged.append(part)
        self.parts = merged
        self.constant: bytes | None = None  # the value when it has no per-request variable
        self.variable: Callable[[RequestContext], bytes] | None = None  # when it is one variable alone
        if not merged:
            self.constant = b""
        elif len(merged) == 1:
            only = merged[0]
            if isinstance(only, bytes):
                self.constant = only
            else:
                self.variable = only

    def render(self, ctx: RequestContext) -> bytes:
        if self.variable is not None:
            return self.variable(ctx)
        return b"".join([p if isinstance(p, bytes) else p(ctx) for p in self.parts])


class Transform:
    """One direction's set/add/remove, compiled: names lowercased, values as templates;
    the fields whose value is the same on every request are rendered once."""

    __slots__ = ("adds", "constant", "drop", "mask")

    def __init__(self, cfg: HeaderTransformConfig, variables: dict[str, Part]) -> None:
        self.drop = {n.lower().encode("latin-1") for n in (*cfg.set, *cfg.remove)}
        self.mask = length_mask(frozenset(self.drop))
        adds = [
            (n.lower().encode("latin-1"), Template(v, variables))
            for n, v in (*cfg.set.items(), *cfg.add.items())
        ]
        self.constant: Headers = [(n, t.constant) for n, t in adds if t.constant is not None]
        self.adds = [(n, t) for n, t in adds if t.constant is None]

    def apply(self, ctx: RequestContext, headers: Headers) -> Headers:
        """`headers` without the dropped fields, plus the rendered ones: a new list when a
        field had to go, else `headers` itself, extended (nearly always: a client rarely
        sends the fields a route sets)."""
        drop, mask = self.drop, self.mask
        for name, _ in headers:
            if mask >> len(name) & 1 and name in drop:  # most names are ruled out by length
                out = [h for h in headers if h[0] not in drop]
                self.extend(ctx, out)
                return out
        self.extend(ctx, headers)
        return headers

    def extend(self, ctx: RequestContext, out: Headers) -> None:
        out.extend(self.constant)
        for name, template in self.adds:
            out.append((name, template.render(ctx)))


class HeaderTransformFilter(Filter):
    name = "transforms"
    priority = 700  # after auth (1250) and rate limits (910): $user is known by then

    def __init__(self, cfg: Config) -> None:
        self.client_ip = ClientIp(cfg.server.trusted_proxies)
        # Per route: (request transform, response transform), either None.
        self.routes: dict[str, tuple[Transform | None, Transform | None]] = {}
        for route in cfg.routes:
            if route.request_headers is None and route.response_headers is None:
                continue
            variables: dict[str, Part] = {
                "client_ip": self._client_ip if cfg.server.trusted_proxies else _peer_ip,
                "request_id": _request_id,
                "route_id": route.id.encode("latin-1"),  # fixed per route: rendered once
                "user": _user,
            }
            request = Transform(route.request_headers, variables) if route.request_headers else None
            response = Transform(route.response_headers, variables) if route.response_headers else None
            self.routes[route.id] = (request, response)

    def _client_ip(self, ctx: RequestContext) -> bytes:
        return self.client_ip.resolve(ctx.client_ip, ctx.cycle.headers).encode("latin-1")

    def applies_to(self, route: Route | None) -> bool:
        return route is not None and route.id in self.routes

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        request, response = self.routes[ctx.route.id]  # type: ignore[union-attr]  # applies_to: a route
        if response is not None and response.drop:
            drop = ctx.drop_response_fields  # the upstream's own copies go too
            ctx.drop_response_fields = response.drop if drop is None else drop | response.drop
            ctx.drop_response_mask |= response.mask
        if request is not None:
            cycle = ctx.cycle
            cycle.headers = request.apply(ctx, cycle.headers)  # the listener's list: this request's own
        return None

    def on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        response = self.routes[ctx.route.id][1]  # type: ignore[union-attr]
        if response is not None:
            # `headers` is what the gateway adds (and, on a local reply, all of them).
            result = response.apply(ctx, headers)
            if result is not headers:
                headers[:] = result


def _request_id(ctx: RequestContext) -> bytes:
    return ctx.request_id_b


def _user(ctx: RequestContext) -> bytes:
    return ctx.user.encode("latin-1", "replace") if ctx.user is not None else b""


def _peer_ip(ctx: RequestContext) -> bytes:
    """`$client_ip` without trusted proxies: the socket peer, as the listener encoded it."""
    return ctx.cycle.proto.client_ip_b
