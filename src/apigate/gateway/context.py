"""Per-request state that filters read and write (`RequestContext`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from apigate.http.headers import Headers

if TYPE_CHECKING:
    from apigate.gateway.router import Route
    from apigate.http.server import RequestCycle


class RequestContext:
    """Everything known about one request, from arrival to the access-log event."""

    __slots__ = (
        "claims",
        "client_ip",
        "cycle",
        "error",
        "method",
        "params",
        "path",
        "query",
        "request_id",
        "response_headers",
        "route",
        "start",
        "status",
        "upstream_duration",
        "upstream_failure",
        "upstream_id",
        "user",
        "vars",
    )

    def __init__(self, cycle: RequestCycle, path: str, query: bytes, start: float) -> None:
        self.cycle = cycle
        self.method = cycle.method
        self.path = path  # normalised path, without the query
        self.query = query  # raw query string, with its leading '?', or b""
        self.client_ip = cycle.client
        self.start = start
        self.request_id = ""
        self.route: Route | None = None
        self.params: dict[str, str] = {}
        self.status = 0
        self.error: str | None = None  # gateway error code, when the gateway answered itself
        self.upstream_id: str | None = None
        self.upstream_duration: float | None = None
        self.upstream_failure: str | None = None  # connect, timeout, reset, bad_response
        self.user: str | None = None
        self.claims: dict[str, Any] | None = None
        self.response_headers: Headers = []  # added to the response by filters
        self.vars: dict[str, Any] = {}  # free space for filters
