"""IP rules (Kong's ip-restriction, nginx's allow/deny): which client networks may call.

`ip_deny` and `ip_allow` hold addresses and CIDRs, IPv4 and IPv6. They are evaluated
against the client address as `server.trusted_proxies` resolve it (the socket peer, or
the X-Forwarded-For entry a trusted proxy wrote; never a header a client chose):

- deny wins: an address in the top-level `ip_deny` or in the route's `ip_deny` is
  refused (reason `ip_denied`);
- else, when an allow list applies (the route's `ip_allow` if it has one, else the
  top-level one), an address outside it is refused (reason `ip_not_allowed`);
- an empty allow list admits everyone; a route's `ip_allow: []` opens it up again.

A refusal is 403 with the usual JSON error body, counts in `http_requests_total` like
any answer and in `access_denied_total{route,reason}`. The filter runs before auth and
CORS (priority 3000), joins only routes with rules, and caches its decision per address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from apigate.config.schema import Config, RouteConfig
from apigate.gateway.clientip import ClientIp, IpNetwork, parse_ip, parse_networks
from apigate.gateway.filters import Filter, RequestContext, RequestOutcome, Response, Sample
from apigate.gateway.router import Route
from apigate.logs import events
from apigate.telemetry.names import ACCESS_DENIED_TOTAL

DENIED = "ip_denied"
NOT_ALLOWED = "ip_not_allowed"
_CACHE_MAX = 4096  # decisions kept per rule set; cleared when full


class Rules:
    """One route's effective rules and a cache of decisions by address."""

    __slots__ = ("allow", "cache", "deny", "last_client", "last_reason")

    def __init__(self, allow: tuple[IpNetwork, ...], deny: tuple[IpNetwork, ...]) -> None:
        self.allow = allow
        self.deny = deny
        self.cache: dict[str, str | None] = {}
        # The previous request's address and decision: the requests of a keep-alive
        # connection skip hashing the address.
        self.last_client: str | None = None
        self.last_reason: str | None = None

    def decide(self, client: str) -> str | None:
        """None to admit, else the reason for refusing."""
        if client == self.last_client:
            return self.last_reason
        reason = self._cached(client)
        self.last_client = client
        self.last_reason = reason
        return reason

    def _cached(self, client: str) -> str | None:
        try:
            return self.cache[client]
        except KeyError:
            pass
        addr = parse_ip(client)
        reason: str | None
        if addr is None:
            reason = NOT_ALLOWED if self.allow else None  # "unix" or unparsable: not in any list
        elif _within(addr, self.deny):
            reason = DENIED
        elif self.allow and not _within(addr, self.allow):
            reason = NOT_ALLOWED
        else:
            reason = None
        if len(self.cache) >= _CACHE_MAX:
            self.cache.clear()
        self.cache[client] = reason
        return reason


def _within(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[IpNetwork, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


def has_rules(cfg: Config) -> bool:
    return bool(cfg.ip_allow or cfg.ip_deny) or any(r.ip_allow or r.ip_deny for r in cfg.routes)


class IpRulesFilter(Filter):
    name = "ip_rules"
    priority = 3000  # before CORS (2000) and auth (1250): a refused network learns nothing more

    def __init__(self, cfg: Config) -> None:
        self.client_ip = ClientIp(cfg.server.trusted_proxies)
        # By Route.index (the route's place in cfg.routes): None where no rule applies.
        self.rules: list[Rules | None] = [self._rules_for(cfg, route) for route in cfg.routes]
        self.denied: dict[tuple[str, str], int] = {}

    @staticmethod
    def _rules_for(cfg: Config, route: RouteConfig) -> Rules | None:
        allow = cfg.ip_allow if route.ip_allow is None else route.ip_allow
        deny = [*cfg.ip_deny, *route.ip_deny]
        if not allow and not deny:
            return None
        return Rules(parse_networks(allow), parse_networks(deny))

    def applies_to(self, route: Route | None) -> bool:
        return route is not None and self.rules[route.index] is not None

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        route = ctx.route
        assert route is not None  # applies_to: always a route
        client = self.client_ip.resolve(ctx.client_ip, ctx.cycle.headers)
        rules = self.rules[route.index]
        assert rules is not None  # applies_to
        reason = rules.decide(client)
        if reason is None:
            return None
        key = (route.id, reason)
        self.denied[key] = self.denied.get(key, 0) + 1
        events.emit(
            "WARN",
            "ip_rules",
            "access_denied",
            "Client address refused by IP rules",
            reason=reason,
            correlation_id=ctx.request_id,
            route=route.id,
            client_ip=client,
            method=ctx.method,
            path=ctx.path,
        )
        return Response.error_reply("forbidden", ctx)

    def samples(self) -> Iterator[Sample]:
        for (route, reason), n in self.denied.items():
            yield ACCESS_DENIED_TOTAL, (route, reason), float(n)
