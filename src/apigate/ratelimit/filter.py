"""The rate-limit filter (priority 910, Kong's rate-limiting slot, after auth at 1250).

Each matched route gets a `Rule` when the filter is built: its own `rate_limit`, else
`rate_limiting.default_limit` (shared across those routes: scope `d`), or none when
`rate_limit: false` or nothing applies. Requests that matched no route are not limited.

Per request: build the key (keys.py), then ask the store. In memory the answer is
synchronous (no task). With Redis the filter returns a future that the store's callback
resolves with the final answer when the loop turn's batch is answered; the gateway goes
on from the future's done-callback, so a Redis check costs no task either.

With `rate_limiting.leases`, a token-bucket key that is busy and far from its limit spends
tokens Redis leased to this instance, without a call (leases.py; exact all the same).

While Redis is unreachable (breaker open, timeout, connection refused): `fail_closed`
answers 503 `rate_limit_unavailable`; `fail_open` counts the request in a per-instance
in-memory limiter with the same limits and logs a `rate_limit_degraded` warning (at most
one per `DEGRADED_LOG_INTERVAL_S`).

Every response on a limited route carries RateLimit-Limit / -Remaining / -Reset
(draft-ietf-httpapi-ratelimit-headers; Reset in delta-seconds) and the X-RateLimit-*
twins many clients still read; they go into `ctx.response_headers`, so the 429,
proxied responses and any later local reply all carry them. A rejection is 429
`rate_limited` with Retry-After in whole seconds, at least 1 (RFC 9110 §10.2.3).

Counters for metrics (exported by the telemetry package):
- `limited[(route_id, key_type)]` -> rate_limited_requests_total{route,key_type}
- `store.backend_errors`, `store.latency_*` on the RedisStore (see redis.py and apigate/redis/);
  `circuit_open` there counts checks answered without Redis while the breaker was open.
- `degraded` -> checks answered by the fail_open local limiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial

from apigate.config.schema import Config, LimitConfig
from apigate.gateway.filters import Filter, RequestContext, RequestOutcome, Response, Sample
from apigate.gateway.router import Route
from apigate.logs import events
from apigate.ratelimit.algorithms import ALGORITHMS, SHORT_NAMES, Algorithm, Decision, check_units, window_ms
from apigate.ratelimit.keys import ClientIp, key_for, scope_prefix
from apigate.ratelimit.leases import LeaseBook
from apigate.ratelimit.memory import MemoryStore
from apigate.ratelimit.redis import RedisStore, StoreUnavailable, call_args, lease_args, packed_args
from apigate.redis.endpoint import ratelimit_target
from apigate.telemetry.names import (
    RATE_LIMIT_BACKEND_CHECKS_TOTAL,
    RATE_LIMIT_BACKEND_ERRORS_TOTAL,
    RATE_LIMIT_BACKEND_LATENCY_SECONDS,
    RATE_LIMIT_BACKEND_ROUND_TRIPS_TOTAL,
    RATE_LIMITED_REQUESTS_TOTAL,
)

DEGRADED_LOG_INTERVAL_S = 10.0
X_API_KEY = b"x-api-key"

RATELIMIT_LIMIT = b"ratelimit-limit"
RATELIMIT_REMAINING = b"ratelimit-remaining"
RATELIMIT_RESET = b"ratelimit-reset"
X_RATELIMIT_LIMIT = b"x-ratelimit-limit"
X_RATELIMIT_REMAINING = b"x-ratelimit-remaining"
X_RATELIMIT_RESET = b"x-ratelimit-reset"
RETRY_AFTER = b"retry-after"

_INTS = [b"%d" % i for i in range(1024)]


def _int(i: int) -> bytes:
    return _INTS[i] if i < 1024 else b"%d" % i


def seconds(ms: int) -> int:
    """Whole seconds, rounded up: a client waiting that long is never early."""
    return -(-ms // 1000)


class Rule:
    """One route's limit, resolved once: key parts, packed Redis arguments, header values."""

    def __init__(self, route_id: str, limit: LimitConfig, scope: str) -> None:
        self.route_id = route_id
        self.key_type = limit.key_type
        self.algorithm = ALGORITHMS[limit.algorithm]
        self.limit = limit.limit
        self.window = window_ms(limit.window_secs)
        check_units(self.limit, self.window)
        self.prefix = scope_prefix(scope, SHORT_NAMES[self.algorithm], limit.key_type)
        self.limit_b = _int(self.limit)
        self.args = packed_args(call_args(self.algorithm, self.limit, self.window))
        self.header = limit.key_type[7:].lower().encode() if limit.key_type.startswith("header:") else b""
        self.route_key = key_for(self.prefix, b"route", route_id.encode())
        self.ip_prefix = self.prefix + b"ip="  # + the client ip (always short: kept as it is)
        self.metric_key = (route_id, limit.key_type)
        self.limit_headers = ((RATELIMIT_LIMIT, self.limit_b), (X_RATELIMIT_LIMIT, self.limit_b))
        self.leased = self.algorithm == Algorithm.TOKEN_BUCKET

    def refill_ms(self, remaining: int) -> int:
        """Until a token bucket with `remaining` tokens is full again."""
        return -(-(self.limit - remaining) * self.window // self.limit)


class RateLimitFilter(Filter):
    name = "ratelimit"
    priority = 910

    def __init__(
        self, cfg: Config, store: RedisStore | None = None, memory: MemoryStore | None = None
    ) -> None:
        rl = cfg.rate_limiting
        self.fail_open = rl is not None and rl.failure_mode == "fail_open"
        self.rules: dict[str, Rule] = {}
        default = rl.default_limit if rl is not None else None
        for route in cfg.routes:
            if route.rate_limit is False:
                continue
            if route.rate_limit is not None:
                self.rules[route.id] = Rule(route.id, route.rate_limit, f"r:{route.id}")
            elif default is not None:
                self.rules[route.id] = Rule(route.id, default, "d")
        self.client_ip = ClientIp(cfg.server.trusted_proxies)
        self.memory = memory if memory is not None else MemoryStore()
        self.store = store
        target = ratelimit_target(cfg)
        if store is None and rl is not None and target is not None:
            self.store = RedisStore(target, rl.timeout_ms)
        # token-bucket leases (leases.py): only in front of Redis
        self.leases = LeaseBook() if self.store is not None and rl is not None and rl.leases else None
        # metrics
        self.limited: dict[tuple[str, str], int] = {r.metric_key: 0 for r in self.rules.values()}
        self.degraded = 0
        self.degraded_log = events.Throttle(DEGRADED_LOG_INTERVAL_S)

    def applies_to(self, route: Route | None) -> bool:
        return route is not None and route.id in self.rules

    # ------------------------------------------------------------------ keys
    def key(self, ctx: RequestContext, rule: Rule) -> bytes:
        kind = rule.key_type
        if kind == "ip" and not self.client_ip.networks:  # the common case, kept short
            return rule.ip_prefix + ctx.client_ip.encode()
        if kind == "route":
            return rule.route_key
        if kind == "user":
            if ctx.user is not None:
                return key_for(rule.prefix, b"user", ctx.user.encode())
        elif kind == "api_key" or rule.header:
            wanted = rule.header or X_API_KEY
            for name, value in ctx.cycle.headers:
                if name == wanted:
                    return key_for(rule.prefix, b"h", value, hashed=kind == "api_key")
        ip = ctx.client_ip
        if self.client_ip.networks:
            ip = self.client_ip.resolve(ip, ctx.cycle.headers)
        return rule.ip_prefix + ip.encode()

    # ------------------------------------------------------------------ the request
    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        assert ctx.route is not None
        rule = self.rules[ctx.route.id]
        key = self.key(ctx, rule)
        store = self.store
        if store is None:
            return self.decide(ctx, rule, self.memory.check(key, rule.algorithm, rule.limit, rule.window))
        book = self.leases
        if book is not None and rule.leased:
            now = ctx.start  # (the request's start: earlier than the clock, so a lease ends sooner)
            left = book.spend(key, now)
            if left >= 0:  # a token leased to this instance: Redis counted it already
                return self.decide(ctx, rule, (True, left, rule.refill_ms(left), 0))
            if store.available:
                want, epoch, back = book.ask(key, now, rule.limit)
                if want or back:
                    leased: asyncio.Future[Response | None] = store.loop.create_future()
                    args = lease_args(want, epoch, back)
                    answer = partial(self._leased, ctx, rule, key, leased, now, want)
                    store.submit_lease(key, rule.args, args, answer)
                    return leased
        if not store.available:
            store.backend_errors["circuit_open"] += 1
            return self.unavailable(ctx, rule, key)
        # The answer is computed in the store's callback, when the batch's replies arrive;
        # the future carries it to the gateway, which continues from a done-callback.
        outcome: asyncio.Future[Response | None] = store.loop.create_future()
        store.submit(key, rule.args, partial(self._answered, ctx, rule, key, outcome))
        return outcome

    def _answered(
        self,
        ctx: RequestContext,
        rule: Rule,
        key: bytes,
        outcome: asyncio.Future[Response | None],
        reply: object,
    ) -> None:
        if outcome.done():  # the request went away meanwhile
            return
        assert self.store is not None
        result = self.store.decision(reply)
        if isinstance(result, StoreUnavailable):
            outcome.set_result(self.unavailable(ctx, rule, key))
        else:
            outcome.set_result(self.decide(ctx, rule, result))

    def _leased(
        self,
        ctx: RequestContext,
        rule: Rule,
        key: bytes,
        outcome: asyncio.Future[Response | None],
        sent_at: float,
        want: int,
        reply: object,
    ) -> None:
        assert self.store is not None and self.leases is not None
        result = self.store.lease_decision(reply)
        if isinstance(result, StoreUnavailable):
            if want:
                self.leases.answer(key, sent_at, 0, -1, 0, 0)
            if not outcome.done():
                outcome.set_result(self.unavailable(ctx, rule, key))
            return
        allowed, remaining, reset, retry, granted, epoch, valid = result
        if want:  # recorded even when the request went away meanwhile: the tokens are ours
            self.leases.answer(key, sent_at, granted, epoch, valid, remaining)
        if not outcome.done():
            # what the client can still do: the bucket's tokens and the ones leased here
            outcome.set_result(self.decide(ctx, rule, (allowed, remaining + granted, reset, retry)))

    def decide(self, ctx: RequestContext, rule: Rule, d: Decision) -> Response | None:
        allowed, remaining_n, reset_ms, retry_ms = d
        reset = _int(-(-reset_ms // 1000))
        remaining = _int(remaining_n)
        limit, x_limit = rule.limit_headers
        headers = [
            limit,
            (RATELIMIT_REMAINING, remaining),
            (RATELIMIT_RESET, reset),
            x_limit,
            (X_RATELIMIT_REMAINING, remaining),
            (X_RATELIMIT_RESET, reset),
        ]
        if ctx.response_headers:
            ctx.response_headers.extend(headers)
        else:  # the shared empty default (context.py): this request gets its own list
            ctx.response_headers = headers
        if allowed:
            return None
        self.limited[rule.metric_key] += 1
        retry = _int(max(1, seconds(retry_ms)))
        return Response.error_reply("rate_limited", ctx, [(RETRY_AFTER, retry)])

    def unavailable(self, ctx: RequestContext, rule: Rule, key: bytes) -> Response | None:
        if not self.fail_open:
            return Response.error_reply("rate_limit_unavailable", ctx)
        self.degraded += 1
        if self.degraded_log.ready():
            events.emit(
                "WARN",
                "ratelimit",
                "rate_limit_degraded",
                "Rate-limit store unavailable: limiting per instance in memory (fail_open)",
                route=rule.route_id,
            )
        return self.decide(ctx, rule, self.memory.check(key, rule.algorithm, rule.limit, rule.window))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect to Redis before the listener accepts (in the background: a Redis that
        is down is reported as usual and does not hold the worker's start)."""
        if self.store is not None:
            self.store.start()

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    def samples(self) -> Iterator[Sample]:
        """rate_limited_requests_total, and the Redis store's errors and round-trip latency."""
        for (route, key_type), n in self.limited.items():
            yield RATE_LIMITED_REQUESTS_TOTAL, (route, key_type), float(n)
        store = self.store
        if store is None:
            return
        for reason, n in store.backend_errors.items():
            yield RATE_LIMIT_BACKEND_ERRORS_TOTAL, (reason,), float(n)
        yield RATE_LIMIT_BACKEND_ROUND_TRIPS_TOTAL, (), float(store.round_trips)
        yield RATE_LIMIT_BACKEND_CHECKS_TOTAL, (), float(store.checks_sent)
        buckets = [float(b) for b in store.latency_buckets]
        over = float(store.latency_count) - sum(buckets)  # above the last bound: +Inf only
        yield RATE_LIMIT_BACKEND_LATENCY_SECONDS, (), [*buckets, over, float(store.latency_sum)]
