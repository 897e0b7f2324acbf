"""Every metric name apigate exports is defined here, once.

The request counters and histograms the guide's alert rules query
(`http_requests_total`, `http_request_duration_seconds`, ...) arrive with the
Observability work; what is here is read at scrape time from state the gateway keeps
anyway, so exporting it costs the request path nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apigate import __version__

if TYPE_CHECKING:
    from apigate.http.server import ServerState

BUILD_INFO = "apigate_build_info"
ACTIVE_CONNECTIONS = "active_connections"
IN_FLIGHT_REQUESTS = "in_flight_requests"

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def render(state: ServerState) -> bytes:
    """Prometheus text exposition (format 0.0.4) of the gauges above."""
    lines = [
        f"# HELP {BUILD_INFO} apigate build information.",
        f"# TYPE {BUILD_INFO} gauge",
        f'{BUILD_INFO}{{version="{__version__}"}} 1',
        f"# HELP {ACTIVE_CONNECTIONS} Open client connections on the proxy listener.",
        f"# TYPE {ACTIVE_CONNECTIONS} gauge",
        f"{ACTIVE_CONNECTIONS} {len(state.connections)}",
        f"# HELP {IN_FLIGHT_REQUESTS} Requests being handled right now.",
        f"# TYPE {IN_FLIGHT_REQUESTS} gauge",
        f"{IN_FLIGHT_REQUESTS} {state.in_flight}",
    ]
    return ("\n".join(lines) + "\n").encode()
