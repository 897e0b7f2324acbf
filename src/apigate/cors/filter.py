"""CORS as the Fetch standard (§3.2, "CORS protocol") asks a server to speak it.

A browser calling from another origin sends `Origin`; for anything beyond a "simple"
request it first sends a preflight: `OPTIONS` with `Origin` and
`Access-Control-Request-Method` (and `-Headers`). The gateway answers preflights itself
(204, never forwarded, before auth: a preflight carries no credentials) and adds
`Access-Control-Allow-Origin` to actual requests from allowed origins. It always echoes
the request's origin, never `*`, and says `Vary: Origin` on every response of a CORS
route, so a shared cache never serves one origin's answer to another. A disallowed
origin gets no CORS headers at all: the browser then refuses the response to the page.

An actual request's fields depend only on its origin: they are serialized once per
origin and spliced into the response head as one piece (`ctx.response_fields`). A route
whose response transform sets or removes one of them, or that has plugins (which may
read or edit what the gateway adds), gets them as (name, value) pairs instead.

The policy is the route's `cors:` if it has one (`false` turns CORS off), else the
top-level `cors:`. The upstream's own `Access-Control-*` response fields are dropped on
a CORS route: two answers to the same question make browsers fail the request.

A preflight to a route that does not serve OPTIONS (`methods: [GET]`) matches no route;
the filter also sits on the unmatched chain and finds the route the preflight asks about
by `Access-Control-Request-Method`, so such routes still get their preflight answered.
"""

from __future__ import annotations

import re
from typing import Final

from apigate.config.schema import Config, CorsConfig, RouteConfig
from apigate.gateway.filters import Filter, RequestContext, RequestOutcome, Response
from apigate.gateway.router import Route, Router
from apigate.http.headers import Headers, encode_headers, length_mask

ORIGIN: Final = b"origin"
REQUEST_METHOD: Final = b"access-control-request-method"
REQUEST_HEADERS: Final = b"access-control-request-headers"
ALLOW_ORIGIN: Final = b"access-control-allow-origin"
ALLOW_CREDENTIALS: Final = b"access-control-allow-credentials"
ALLOW_METHODS: Final = b"access-control-allow-methods"
ALLOW_HEADERS: Final = b"access-control-allow-headers"
EXPOSE_HEADERS: Final = b"access-control-expose-headers"
MAX_AGE: Final = b"access-control-max-age"
VARY: Final = b"vary"
VARY_ORIGIN: Final = (VARY, b"Origin")
VARY_PREFLIGHT: Final = (VARY, b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
_VARY_ONLY: Final = (VARY_ORIGIN,)
_VARY_ONLY_WIRE: Final = b"vary: Origin\r\n"
UPSTREAM_CORS_FIELDS: Final = {
    ALLOW_ORIGIN,
    ALLOW_CREDENTIALS,
    EXPOSE_HEADERS,
    ALLOW_METHODS,
    ALLOW_HEADERS,
    MAX_AGE,
}
UPSTREAM_CORS_MASK: Final = length_mask(frozenset(UPSTREAM_CORS_FIELDS))
_CACHE_MAX = 1024  # origin decisions kept per policy


class Allowed:
    """The fields an actual request from one allowed origin gets: as pairs, and serialized."""

    __slots__ = ("fields", "wire")

    def __init__(self, fields: Headers) -> None:
        self.fields = tuple(fields)
        self.wire = encode_headers(fields)


class Policy:
    """One route's `cors:` block, compiled: origin checks and the response fields, built
    once per origin. `serialized`: the route takes them as `ctx.response_fields`."""

    def __init__(self, cfg: CorsConfig, serialized: bool = True) -> None:
        self.serialized = serialized
        self.any_origin = "*" in cfg.allow_origins
        self.exact = {o.lower().encode("latin-1") for o in cfg.allow_origins if not o.startswith("~")}
        self.patterns = [re.compile(o[1:]) for o in cfg.allow_origins if o.startswith("~")]
        self.any_header = "*" in cfg.allow_headers
        self.credentials = cfg.allow_credentials
        self.allow_methods = ", ".join(cfg.allow_methods).encode("ascii")
        self.allow_headers = ", ".join(cfg.allow_headers).encode("ascii")
        self.expose = ", ".join(cfg.expose_headers).encode("ascii")
        self.max_age = str(cfg.max_age_secs).encode("ascii")
        # origin -> the fields an actual request from it gets (None: not allowed)
        self.known: dict[bytes, Allowed | None] = {}
        self.last_origin: bytes | None = None
        self.last_fields: Allowed | None = None

    def allows(self, origin: bytes) -> bool:
        return self.actual(origin) is not None

    def actual(self, origin: bytes) -> Allowed | None:
        """The fields an actual request from `origin` gets, or None when it is not allowed."""
        if origin == self.last_origin:  # a page's requests come from one origin: no hashing
            return self.last_fields
        try:
            fields = self.known[origin]
        except KeyError:
            fields = self._decide(origin)
        self.last_origin = origin
        self.last_fields = fields
        return fields

    def _decide(self, origin: bytes) -> Allowed | None:
        text = origin.decode("latin-1")
        allowed = (
            self.any_origin or origin.lower() in self.exact or any(p.fullmatch(text) for p in self.patterns)
        )
        fields: Allowed | None = None
        if allowed:
            out: Headers = [(ALLOW_ORIGIN, origin)]
            if self.credentials:
                out.append((ALLOW_CREDENTIALS, b"true"))
            if self.expose:
                out.append((EXPOSE_HEADERS, self.expose))
            out.append(VARY_ORIGIN)
            fields = Allowed(out)
        if len(self.known) >= _CACHE_MAX:
            self.known.clear()
        self.known[origin] = fields
        return fields

    def preflight(self, origin: bytes, requested_headers: bytes | None) -> Headers:
        out: Headers = [(ALLOW_ORIGIN, origin)]
        if self.credentials:
            out.append((ALLOW_CREDENTIALS, b"true"))
        out.append((ALLOW_METHODS, self.allow_methods))
        if requested_headers and self.any_header:
            out.append((ALLOW_HEADERS, requested_headers))  # '*' is literal with credentials: echo
        elif self.allow_headers:
            out.append((ALLOW_HEADERS, self.allow_headers))
        out.append((MAX_AGE, self.max_age))
        return out


def effective(cfg: Config, route: RouteConfig) -> CorsConfig | None:
    if route.cors is False:
        return None
    return route.cors if route.cors is not None else cfg.cors


def wanted(cfg: Config) -> bool:
    return cfg.cors is not None or any(r.cors for r in cfg.routes)


def serializable(cfg: Config, route: RouteConfig) -> bool:
    """Whether the route's CORS fields may skip the (name, value) pairs: no plugin could
    read them, and no response transform sets or removes one of them."""
    if cfg.has_plugins(route):
        return False
    edited = route.response_headers
    if edited is None:
        return True
    names = {n.lower().encode("latin-1") for n in (*edited.set, *edited.remove)}
    return not names & (UPSTREAM_CORS_FIELDS | {VARY})


class CorsFilter(Filter):
    name = "cors"
    priority = 2000  # before auth (1250): a preflight carries no credentials; after IP rules

    def __init__(self, cfg: Config) -> None:
        # By Route.index (the route's place in cfg.routes): None on a route without CORS.
        self.policies: list[Policy | None] = []
        for route in cfg.routes:
            policy = effective(cfg, route)
            self.policies.append(Policy(policy, serializable(cfg, route)) if policy is not None else None)
        self.router = Router(cfg.routes)  # for preflights to routes that do not serve OPTIONS

    def applies_to(self, route: Route | None) -> bool:
        return route is None or self.policies[route.index] is not None

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        origin: bytes | None = None
        asked: bytes | None = None
        asked_headers: bytes | None = None
        for name, value in ctx.cycle.headers:
            n = len(name)  # compared first: most names are ruled out without a byte compare
            if n == 6:
                if name == ORIGIN:
                    origin = value
            elif n == 29:
                if name == REQUEST_METHOD:
                    asked = value
            elif n == 30 and name == REQUEST_HEADERS:
                asked_headers = value
        route = ctx.route
        if ctx.method == "OPTIONS" and asked is not None:
            return self._preflight(ctx, route, origin, asked, asked_headers)
        if route is None:
            return None
        policy = self.policies[route.index]
        assert policy is not None  # applies_to
        drop = ctx.drop_response_fields
        ctx.drop_response_fields = UPSTREAM_CORS_FIELDS if drop is None else drop | UPSTREAM_CORS_FIELDS
        ctx.drop_response_mask |= UPSTREAM_CORS_MASK
        allowed = policy.actual(origin) if origin is not None else None
        if policy.serialized:
            wire = _VARY_ONLY_WIRE if allowed is None else allowed.wire
            before = ctx.response_fields
            ctx.response_fields = wire if before is None else before + wire
            return None
        fields = _VARY_ONLY if allowed is None else allowed.fields
        if ctx.response_headers:
            ctx.response_headers.extend(fields)
        else:
            ctx.response_headers = list(fields)  # the shared empty default is never appended to
        return None

    def _preflight(
        self,
        ctx: RequestContext,
        route: Route | None,
        origin: bytes | None,
        asked: bytes,
        asked_headers: bytes | None,
    ) -> RequestOutcome:
        if route is None:
            if origin is None:
                return None
            match = self.router.match(asked.decode("latin-1").strip(), ctx.path)
            if type(match) is not tuple:
                return None  # the preflight asks about nothing served here: 404/405 as usual
            route = match[0]
        policy = self.policies[route.index]
        if policy is None:
            return None
        headers: Headers = [VARY_PREFLIGHT]
        if origin is not None and policy.allows(origin):
            headers += policy.preflight(origin, asked_headers)
        return Response(204, headers)
