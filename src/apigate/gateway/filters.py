"""The filter contract and the chain that runs it (Envoy's filter chain, Kong's phases).

A filter implements only the phases it needs:

- `on_request(ctx)` returns a `Response` to answer locally (ending the chain), None to go
  on, or an awaitable of either when it must wait (an `async def` is fine). Runs in
  descending `priority`: correlation > auth > rate limit. A filter that can decide
  without waiting (a cached token, an in-memory counter) returns directly: a request
  whose filters all decide synchronously never creates a task, which is a large share
  of the gateway's per-request cost in Python.
  A filter that returns an `asyncio.Future` (the rate limiter's batched Redis check),
  when no filter runs after it, is continued from the future's done-callback: no task.
- `on_response(ctx, status, headers)` appends the headers a filter adds to the response;
  runs in reverse order, on proxied responses and local replies alike. For a proxied
  response `headers` holds only what the gateway adds: the upstream's own fields are
  forwarded as the upstream connection parsed them, already serialized.
- `on_complete(ctx)` records metrics and the log event after the response; it never
  awaits and never raises (an exception there is logged and swallowed).

The proxy is the terminal step after the chain; the listener knows nothing of filters.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Final, TypeAlias

from mypy_extensions import mypyc_attr

from apigate.gateway.context import RequestContext
from apigate.gateway.errors import error_body, error_headers
from apigate.gateway.router import Route
from apigate.http.headers import X_REQUEST_ID, Headers, is_sane_request_id

log: Final = logging.getLogger("apigate.filters")


# The last three hex digits of an id, as str and as bytes: an id is its block's prefix
# plus one of these, so a request pays two concatenations, not a number formatting.
_HEX3: Final = tuple(f"{i:03x}" for i in range(4096))
_HEX3_B: Final = tuple(h.encode("ascii") for h in _HEX3)


class _RequestIds:
    """UUID-shaped ids: 76 random bits per process in UUID4 layout, then a 48-bit counter.

    Unique across processes and restarts like a UUID4, at a fraction of uuid4()'s cost
    (no syscall, no 128-bit formatting) on the request path.
    """

    def __init__(self) -> None:
        self.prefix = ""
        self.count = 0
        self.block = ""  # prefix + the counter's upper 9 hex digits, renewed every 4096 ids
        self.block_b = b""
        self.renew()

    def renew(self) -> None:
        """A new prefix; called again in every forked worker."""
        r = secrets.token_hex(10)
        self.prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{'89ab'[int(r[16], 16) & 3]}{r[17:20]}-"
        self.count = 0
        self._new_block(0)

    def _new_block(self, n: int) -> None:
        self.block = f"{self.prefix}{n >> 12:09x}"
        self.block_b = self.block.encode("ascii")

    def _step(self) -> int:
        self.count = n = (self.count + 1) & 0xFFFFFFFFFFFF
        low = n & 0xFFF
        if low == 0:
            self._new_block(n)
        return low

    def next(self) -> str:
        return self.block + _HEX3[self._step()]

    def assign(self, ctx: RequestContext) -> None:
        """A new id for the request, as str (logs) and bytes (headers)."""
        low = self._step()
        ctx.request_id = ctx.cycle.request_id = self.block + _HEX3[low]
        ctx.request_id_b = self.block_b + _HEX3_B[low]


_IDS: Final = _RequestIds()
os.register_at_fork(after_in_child=_IDS.renew)


def new_request_id() -> str:
    return _IDS.next()


@dataclass
class Response:
    """A local reply produced by a filter or the gateway itself."""

    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    error: str | None = None  # the gateway error code, for logs and metrics

    @classmethod
    def error_reply(cls, code: str, ctx: RequestContext, extra: Headers | None = None) -> Response:
        status, body = error_body(code, ctx.request_id)
        return cls(status, error_headers(extra), body, code)


RequestOutcome: TypeAlias = Response | Awaitable[Response | None] | None


# Compiled, it stays open to subclasses in interpreted modules (auth, rate limits, metrics,
# logs); `name` and `priority` are class-level so that their class attributes override them.
@mypyc_attr(allow_interpreted_subclasses=True)
class Filter:
    name: ClassVar[str] = "filter"
    priority: ClassVar[int] = 0

    def applies_to(self, route: Route | None) -> bool:
        """Whether this filter runs for a route (None: requests that matched no route)."""
        return True

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        return None

    def on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        return None

    def on_complete(self, ctx: RequestContext) -> None:
        return None


def _overrides(f: Filter, phase: str) -> bool:
    return getattr(type(f), phase) is not getattr(Filter, phase)


class FilterChain:
    """The filters that apply to one route, pre-sorted per phase."""

    def __init__(self, filters: Sequence[Filter]) -> None:
        ordered = sorted(filters, key=lambda f: -f.priority)
        self.request = tuple(f for f in ordered if _overrides(f, "on_request"))
        self.response = tuple(f for f in reversed(ordered) if _overrides(f, "on_response"))
        self.complete = tuple(f for f in reversed(ordered) if _overrides(f, "on_complete"))

    def start_request(self, ctx: RequestContext) -> RequestOutcome:
        """Run on_request filters; an awaitable result means the rest runs in `_resume`."""
        filters = self.request
        for i, f in enumerate(filters):
            outcome = f.on_request(ctx)
            if outcome is None:
                continue
            if isinstance(outcome, Response):
                return outcome
            if i + 1 == len(filters):
                return outcome  # nothing runs after it: the caller awaits it (or its future) directly
            return self._resume(ctx, outcome, i + 1)
        return None

    async def _resume(
        self, ctx: RequestContext, pending: Awaitable[Response | None], i: int
    ) -> Response | None:
        outcome = await pending
        if outcome is not None:
            return outcome
        for f in self.request[i:]:
            result = f.on_request(ctx)
            if result is None:
                continue
            if isinstance(result, Response):
                return result
            result = await result
            if result is not None:
                return result
        return None

    def run_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        for f in self.response:
            f.on_response(ctx, status, headers)

    def run_complete(self, ctx: RequestContext) -> None:
        for f in self.complete:
            try:
                f.on_complete(ctx)
            except Exception:
                log.exception("filter %s failed in on_complete", f.name)


class CorrelationFilter(Filter):
    """X-Request-ID: the client's when it is a sane token, else a new UUID4.

    Sent upstream and returned to the client; it is the correlation_id of every log event
    about the request, so one id follows a request through every hop.
    """

    name = "correlation"
    priority = 100_000

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        cycle = ctx.cycle
        given = cycle.client_request_id  # captured by the listener's header scan
        if given is not None and is_sane_request_id(given):
            ctx.request_id_b = given
            ctx.request_id = cycle.request_id = given.decode("ascii")
        else:
            _IDS.assign(ctx)
        return None

    def on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        headers.append((X_REQUEST_ID, ctx.request_id_b))
