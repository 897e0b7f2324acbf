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

And a lifecycle, as Envoy and Kong give theirs: `start()` once the event loop runs (open
connections, start refreshers), `close()` at shutdown and when a reload replaces the
filter (close connections, cancel tasks), and `samples()`, which the metrics exporter
reads at scrape time, so that no other package reaches into a filter's attributes.

`RequestContext` (what filters read and write), `Response` (a local reply) and `finish`
(the one way a request ends) live here with the contract: the three refer to each other.
The proxy is the terminal step after the chain; the listener knows nothing of filters.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

from mypy_extensions import mypyc_attr

from apigate.gateway.router import Route
from apigate.http.errors import error_body, error_headers
from apigate.http.headers import Headers

if TYPE_CHECKING:
    from apigate.http.client import UpstreamPool
    from apigate.http.server import RequestCycle

log: Final = logging.getLogger("apigate.filters")

_NO_HEADERS: Final[Headers] = []  # shared default; filters assign a new list, never append to this
_NO_PARAMS: Final[dict[str, str]] = {}


# One freed instance is kept for the next request (compiled): per-request objects are
# made and freed in turn, so most requests skip the allocator.
@mypyc_attr(free_list_len=1)
class RequestContext:
    """Everything known about one request, from arrival to the access-log event.

    Defaults live on the class so that, interpreted, building a context costs only the
    fields every request sets; compiled (mypyc) it is a C struct either way.
    """

    request_id = ""
    request_id_b = b""  # the same, encoded once for headers
    route: Route | None = None
    params: dict[str, str]
    status = 0
    error: str | None = None  # gateway error code, when the gateway answered itself
    upstream_id: str | None = None
    upstream_duration: float | None = None
    upstream_failure: str | None = None  # connect, timeout, reset, bad_response
    attempts = 1  # upstream tries so far (retries: gateway/balancer.py)
    user: str | None = None
    claims: dict[str, Any] | None = None
    response_headers: Headers  # added to every response by filters
    # Fields of the upstream's response not to forward (lowercase names), set by a filter
    # on the way in (header transforms); None on nearly every request.
    drop_response_fields: set[bytes] | None = None
    drop_response_mask = 0  # headers.length_mask of those names: most fields are ruled out by length
    # Fields a filter adds already serialized (`name: value\r\n` each, lowercase names),
    # spliced into the upstream request head and the response head as one piece each: a
    # route's constant fields are serialized once (CORS, header transforms). Only on routes
    # without plugins: a plugin may read or edit what the gateway adds, so there the same
    # fields come as pairs (`cycle.headers`, `response_headers`, on_response's `headers`).
    # None when there are none (an `is None` test costs nothing on the other routes).
    request_fields: bytes | None = None
    response_fields: bytes | None = None
    # The client's request fields not forwarded: None for proxy.SKIP_REQUEST; with it, the
    # ones a header transform sets or removes (dropped while the head is built, not from
    # `cycle.headers`).
    skip_request_fields: frozenset[bytes] | None = None
    completed = False
    trace_spans: tuple[Any, Any] | None = None  # (server span, client span) when tracing
    chain: FilterChain  # the route's chain, or the one for requests that matched no route
    pool: UpstreamPool  # the matched route's upstream (its timeout_secs is `pool.timeout`)

    def __init__(self, cycle: RequestCycle, path: str, query: bytes, start: float) -> None:
        self.cycle = cycle
        self.method = cycle.method
        self.path = path  # normalised path, without the query
        self.query = query  # raw query string, with its leading '?', or b""
        self.client_ip = cycle.client
        self.start = start
        self.params = _NO_PARAMS  # read-only default
        self.response_headers = _NO_HEADERS

    def add_response_header(self, name: bytes, value: bytes) -> None:
        if self.response_headers is _NO_HEADERS:
            self.response_headers = []
        self.response_headers.append((name, value))


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

Sample: TypeAlias = tuple[str, tuple[str, ...], float | list[float]]
"""(metric name, label values in the metric's label order, value); for a histogram the
value is its series as the registry keeps it: per-bucket counts, the +Inf count, the sum.
Metric names come from apigate/telemetry/names.py, the one place they are spelled."""


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

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Called once the worker's event loop runs, before the listener accepts."""
        return None

    async def close(self) -> None:
        """Called at shutdown after draining, and when a reload replaces this filter:
        release connections and cancel background tasks. Must not raise."""
        return None

    def samples(self) -> Iterable[Sample]:
        """This filter's metric samples, read at scrape time (never on the request path)."""
        return ()


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


def finish(ctx: RequestContext) -> None:
    """The one way a request ends, whatever happened: `on_complete` filters (metrics, the
    access event), then the listener may go on with the connection. Idempotent."""
    if ctx.completed:
        return
    ctx.completed = True
    cycle = ctx.cycle
    if not ctx.status:
        ctx.status = cycle.status or 499  # 499: the client went away (nginx's code)
    chain = ctx.chain
    if chain.complete:
        chain.run_complete(ctx)
    cycle.complete()
