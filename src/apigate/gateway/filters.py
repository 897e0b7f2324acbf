"""The filter contract and the chain that runs it (Envoy's filter chain, Kong's phases).

A filter implements only the phases it needs:

- `async on_request(ctx)` returns a `Response` to answer locally (ending the chain), or
  None to go on. Runs in descending `priority`: correlation > auth > rate limit.
- `on_response(ctx, status, headers)` may append headers; runs in reverse order, on
  proxied responses and local replies alike.
- `on_complete(ctx)` records metrics and the log event after the response; it never
  awaits and never raises (an exception there is logged and swallowed).

The proxy is the terminal step after the chain; the listener knows nothing of filters.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from apigate.gateway.context import RequestContext
from apigate.gateway.errors import error_body, error_headers
from apigate.gateway.router import Route
from apigate.http.headers import X_REQUEST_ID, Headers, is_sane_request_id

log = logging.getLogger("apigate.filters")


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


class Filter:
    name = "filter"
    priority = 0

    def applies_to(self, route: Route | None) -> bool:
        """Whether this filter runs for a route (None: requests that matched no route)."""
        return True

    async def on_request(self, ctx: RequestContext) -> Response | None:
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

    async def run_request(self, ctx: RequestContext) -> Response | None:
        for f in self.request:
            reply = await f.on_request(ctx)
            if reply is not None:
                return reply
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

    async def on_request(self, ctx: RequestContext) -> Response | None:
        for name, value in ctx.cycle.headers:
            if name == X_REQUEST_ID:
                if is_sane_request_id(value):
                    ctx.request_id = value.decode("ascii")
                break
        if not ctx.request_id:
            ctx.request_id = str(uuid.uuid4())
        ctx.cycle.request_id = ctx.request_id
        return None

    def on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        headers.append((X_REQUEST_ID, ctx.request_id.encode("ascii")))
