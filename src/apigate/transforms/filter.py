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

from apigate.config.schema import TRANSFORM_TOKEN, Config, HeaderTransformConfig
from apigate.gateway.clientip import ClientIp
from apigate.gateway.filters import Filter, RequestContext, RequestOutcome
from apigate.gateway.proxy import SKIP_REQUEST
from apigate.gateway.router import Route
from apigate.http.headers import Headers, decode_fields, length_mask


class Variable:
    """A per-request value of a template (`$client_ip`, `$request_id`, `$user`); a class,
    not a function, so that the compiled build calls it directly."""

    def value(self, ctx: RequestContext) -> bytes:
        raise NotImplementedError


class PeerIp(Variable):
    """`$client_ip` without trusted proxies: the socket peer, as the listener encoded it."""

    def value(self, ctx: RequestContext) -> bytes:
        return ctx.cycle.proto.client_ip_b


class ResolvedIp(Variable):
    """`$client_ip` behind trusted proxies."""

    def __init__(self, client_ip: ClientIp) -> None:
        self.client_ip = client_ip

    def value(self, ctx: RequestContext) -> bytes:
        return self.client_ip.resolve(ctx.client_ip, ctx.cycle.headers).encode("latin-1")


class RequestId(Variable):
    def value(self, ctx: RequestContext) -> bytes:
        return ctx.request_id_b


class User(Variable):
    def value(self, ctx: RequestContext) -> bytes:
        return ctx.user.encode("latin-1", "replace") if ctx.user is not None else b""


Part = bytes | Variable  # a literal, or a per-request variable


def parse(text: str, variables: dict[str, Part]) -> list[Part]:
    """A header value's literal pieces and per-request variables, in order."""
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
    return parts


class Template:
    """Literal pieces and per-request variables, as `head` (the literal before the first
    variable) and `steps` (each variable and the literal after it): adjacent literals (a
    per-route variable is one) are joined once, here."""

    __slots__ = ("head", "last_rendered", "last_value", "steps")

    def __init__(self, parts: list[Part]) -> None:
        self.head = b""
        self.steps: list[tuple[Variable, bytes]] = []
        # With one variable: its previous value and the bytes rendered with it (the
        # requests of a connection share their $client_ip, a user's their $user).
        self.last_value: bytes | None = None
        self.last_rendered = b""
        for part in parts:
            if not isinstance(part, bytes):
                self.steps.append((part, b""))
            elif self.steps:
                variable, literal = self.steps[-1]
                self.steps[-1] = (variable, literal + part)
            else:
                self.head += part

    def render(self, ctx: RequestContext) -> bytes:
        steps = self.steps
        if not steps:
            return self.head  # no per-request variable: the same bytes every time
        if len(steps) == 1:  # the usual case
            variable, tail = steps[0]
            value = variable.value(ctx)
            if value != self.last_value:
                self.last_value = value
                self.last_rendered = self.head + value + tail
            return self.last_rendered
        out = [self.head]
        for variable, literal in steps:
            out.append(variable.value(ctx))
            out.append(literal)
        return b"".join(out)


class Transform:
    """One direction's set/add/remove, compiled: the names to drop, and every field that
    `set` and `add` write as one template of serialized lines (`name: value\r\n` each),
    so that fields whose value is the same on every request are serialized once and a
    per-request value is one more piece (`prefix`, value, CRLF + whatever follows).

    `serialized`: the route takes the lines as one piece (`ctx.request_fields`,
    `ctx.response_fields`) and, on the way in, the client's fields named by `set` and
    `remove` are left out of the upstream head as it is built (`ctx.skip_request_fields`).
    On a route with plugins, which may read or edit what the gateway adds, they are
    (name, value) pairs as before, and the client's fields are dropped from the list."""

    __slots__ = ("drop", "lines", "mask", "serialized", "skip_request")

    def __init__(self, cfg: HeaderTransformConfig, variables: dict[str, Part], serialized: bool) -> None:
        self.drop = {n.lower().encode("latin-1") for n in (*cfg.set, *cfg.remove)}
        self.mask = length_mask(frozenset(self.drop))
        self.skip_request: frozenset[bytes] | None = SKIP_REQUEST | self.drop if self.drop else None
        parts: list[Part] = []
        for name, value in (*cfg.set.items(), *cfg.add.items()):
            parts.append(name.lower().encode("latin-1") + b": ")
            parts += parse(value, variables)
            parts.append(b"\r\n")
        self.lines = Template(parts)
        self.serialized = serialized

    def kept(self, headers: Headers) -> Headers:
        """`headers` without the dropped fields: a new list when one had to go, else
        `headers` itself (nearly always: a client rarely sends the fields a route sets)."""
        drop, mask = self.drop, self.mask
        if drop:
            for name, _ in headers:
                if mask >> len(name) & 1 and name in drop:  # most names are ruled out by length
                    return [h for h in headers if h[0] not in drop]
        return headers


class HeaderTransformFilter(Filter):
    name = "transforms"
    priority = 700  # after auth (1250) and rate limits (910): $user is known by then

    def __init__(self, cfg: Config) -> None:
        self.client_ip = ClientIp(cfg.server.trusted_proxies)
        # By Route.index (the route's place in cfg.routes): (request transform, response
        # transform), either None; None for a route without transforms.
        self.routes: list[tuple[Transform | None, Transform | None] | None] = []
        for route in cfg.routes:
            if route.request_headers is None and route.response_headers is None:
                self.routes.append(None)
                continue
            serialized = not cfg.has_plugins(route)
            variables: dict[str, Part] = {
                "client_ip": ResolvedIp(self.client_ip) if cfg.server.trusted_proxies else PeerIp(),
                "request_id": RequestId(),
                "route_id": route.id.encode("latin-1"),  # fixed per route: rendered once
                "user": User(),
            }
            request = response = None
            if route.request_headers:
                # The access log reads User-Agent from `cycle.headers`: a route that sets or
                # removes it changes the list itself.
                edited = {n.lower() for n in (*route.request_headers.set, *route.request_headers.remove)}
                as_pairs = "user-agent" in edited
                request = Transform(route.request_headers, variables, serialized and not as_pairs)
            if route.response_headers:
                response = Transform(route.response_headers, variables, serialized)
            self.routes.append((request, response))

    def applies_to(self, route: Route | None) -> bool:
        return route is not None and self.routes[route.index] is not None

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        route = ctx.route
        assert route is not None  # applies_to: a route, one with transforms
        transforms = self.routes[route.index]
        assert transforms is not None
        request, response = transforms
        if response is not None and response.drop:
            drop = ctx.drop_response_fields  # the upstream's own copies go too
            ctx.drop_response_fields = response.drop if drop is None else drop | response.drop
            ctx.drop_response_mask |= response.mask
        if request is not None:
            lines = request.lines.render(ctx)
            if request.serialized:
                if request.skip_request is not None:
                    ctx.skip_request_fields = request.skip_request
                fields = ctx.request_fields
                ctx.request_fields = lines if fields is None else fields + lines
            else:
                cycle = ctx.cycle
                headers = request.kept(cycle.headers)  # the listener's list: this request's own
                if lines:
                    headers.extend(decode_fields(lines))
                cycle.headers = headers
        return None

    def on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        route = ctx.route
        assert route is not None
        transforms = self.routes[route.index]
        assert transforms is not None
        response = transforms[1]
        if response is not None:
            # `headers` is what the gateway adds (and, on a local reply, all of them).
            kept = response.kept(headers)
            if kept is not headers:
                headers[:] = kept
            lines = response.lines.render(ctx)
            if response.serialized:
                fields = ctx.response_fields
                ctx.response_fields = lines if fields is None else fields + lines
            elif lines:
                headers.extend(decode_fields(lines))
