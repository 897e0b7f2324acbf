"""The metrics listener (`observability.metrics_port`): /metrics and /health/*.

Kept off the proxy port so scrapes and probes never compete with traffic for
connection slots, and so the port can be firewalled separately (Envoy's admin port,
Kong's status listener). Health endpoints answer on both ports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apigate.http.errors import error_body, error_headers, json_headers
from apigate.telemetry import metrics
from apigate.telemetry.health import Health

if TYPE_CHECKING:
    from apigate.http.server import RequestCycle, ServerState


class AdminApp:
    """Handler for the metrics listener."""

    def __init__(self, state: ServerState, health: Health, metrics_enabled: bool) -> None:
        self.state = state
        self.health = health
        self.metrics_enabled = metrics_enabled

    def handle(self, cycle: RequestCycle) -> None:
        path = cycle.target.split(b"?", 1)[0].decode("latin-1")
        if path == "/metrics" and self.metrics_enabled:
            cycle.send_response(200, [(b"content-type", metrics.CONTENT_TYPE)], metrics.render())
        else:
            answer = self.health.answer(path)
            if answer is not None:
                cycle.send_response(answer[0], json_headers(), answer[1])
            else:
                status, body = error_body("not_found", None, "Not a metrics or health endpoint.")
                cycle.send_response(status, error_headers(), body)
        cycle.complete()
