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
from apigate.http.headers import Headers

Part = bytes | Callable[[RequestContext], bytes]


class Template:
    """A header value: literal pieces and per-request variables, joined per request."""

    __slots__ = ("constant", "parts")

    def __init__(self, text: str, variables: dict[str, Callable[[RequestContext], bytes]]) -> None:
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
        self.parts = parts
        self.constant: bytes | None = None
        if all(isinstance(p, bytes) for p in parts):
            self.constant = b"".join(p for p in parts if isinstance(p, bytes))

    def render(self, ctx: RequestContext) -> bytes:
        if self.constant is not None:
            return self.constant
        return b"".join(p if isinstance(p, bytes) else p(ctx) for p in self.parts)


class Transform:
    """One direction's set/add/remove, compiled: names lowercased, values as templates."""

    __slots__ = ("adds", "drop")

    def __init__(
        self, cfg: HeaderTransformConfig, variables: dict[str, Callable[[RequestContext], bytes]]
    ) -> None:
        self.drop = {n.lower().encode("latin-1") for n in (*cfg.set, *cfg.remove)}
        self.adds = [
            (n.lower().encode("latin-1"), Template(v, variables))
            for n, v in (*cfg.set.items(), *cfg.add.items())
        ]

    def apply(self, ctx: RequestContext, headers: Headers) -> Headers:
        """`headers` without the dropped fields, plus the rendered ones (a new list)."""
        drop = self.drop
        out = [h for h in headers if h[0] not in drop] if drop else list(headers)
        for name, template in self.adds:
            out.append((name, template.render(ctx)))
        return out


class HeaderTransformFilter(Filter):
    name = "transforms"
    priority = 700  # after auth (1250) and rate limits (910): $user is known by then

    def __init__(self, cfg: Config) -> None:
        self.client_ip = ClientIp(cfg.server.trusted_proxies)
        variables: dict[str, Callable[[RequestContext], bytes]] = {
            "client_ip": self._client_ip,
            "request_id": _request_id,
            "route_id": _route_id,
            "user": _user,
        }
        self.request: dict[str, Transform] = {}
        self.response: dict[str, Transform] = {}
        for route in cfg.routes:
            if route.request_headers is not None:
                self.request[route.id] = Transform(route.request_headers, variables)
            if route.response_headers is not None:
                self.response[route.id] = Transform(route.response_headers, variables)

    def _client_ip(self, ctx: RequestContext) -> bytes:
        return self.client_ip.resolve(ctx.client_ip, ctx.cycle.headers).encode("latin-1")

    def applies_to(self, route: Route | None) -> bool:
        return route is not None and (route.id in self.request or route.id in self.response)

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        route_id = ctx.route.id  # type: ignore[union-attr]  # applies_to: always a route
        response = self.response.get(route_id)
        if response is not None and response.drop:
            ctx.drop_response_fields = response.drop  # the upstream's own copies
        request = self.request.get(route_id)
        if request is not None:
            ctx.cycle.headers = request.apply(ctx, ctx.cycle.headers)
        return None

    def on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        response = self.response.get(ctx.route.id)  # type: ignore[union-attr]
        if response is not None:
            # `headers` is what the gateway adds (and, on a local reply, all of them).
            headers[:] = response.apply(ctx, headers)


def _request_id(ctx: RequestContext) -> bytes:
    return ctx.request_id_b


def _route_id(ctx: RequestContext) -> bytes:
    return ctx.route.id.encode("latin-1") if ctx.route is not None else b""


def _user(ctx: RequestContext) -> bytes:
    return ctx.user.encode("latin-1", "replace") if ctx.user is not None else b""
