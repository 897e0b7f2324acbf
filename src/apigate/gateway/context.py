"""Per-request state that filters read and write (`RequestContext`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from mypy_extensions import mypyc_attr

from apigate.http.headers import Headers

if TYPE_CHECKING:
    from apigate.gateway.filters import FilterChain
    from apigate.gateway.router import Route
    from apigate.http.server import RequestCycle

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
    user: str | None = None
    claims: dict[str, Any] | None = None
    response_headers: Headers  # added to every response by filters
    completed = False
    trace_spans: tuple[Any, Any] | None = None  # (server span, client span) when tracing
    chain: FilterChain

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
