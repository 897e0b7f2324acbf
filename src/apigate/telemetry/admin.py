"""The metrics listener (`observability.metrics_port`): /metrics and /health/*.

Kept off the proxy port so scrapes and probes never compete with traffic for
connection slots, and so the port can be firewalled separately (Envoy's admin port,
Kong's status listener). Health endpoints answer on both ports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from apigate.http.errors import error_body, error_headers, json_headers
from apigate.telemetry import metrics
from apigate.telemetry.health import Health

if TYPE_CHECKING:
    from apigate.http.server import RequestCycle, ServerState


class AdminApp:
    """Handler for the metrics listener."""

    def __init__(
        self,
        state: ServerState,
        health: Health,
        metrics_enabled: bool,
        reload: Callable[[], Awaitable[tuple[int, dict[str, object]]]] | None = None,
    ) -> None:
        """`reload`: what `POST /admin/reload` runs (the composition root offers it only
        when this listener is bound to loopback); (status, JSON document)."""
        self.state = state
        self.health = health
        self.metrics_enabled = metrics_enabled
        self.reload = reload
        self.tasks: set[asyncio.Task[None]] = set()

    def handle(self, cycle: RequestCycle) -> None:
        path = cycle.target.split(b"?", 1)[0].decode("latin-1")
        if path == ADMIN_RELOAD and self.reload is not None:
            if cycle.method != "POST":
                status, body = error_body("method_not_allowed", None)
                cycle.send_response(status, error_headers([(b"allow", b"POST")]), body)
            elif not cycle.proto.client_ip.startswith("127.") and cycle.proto.client_ip != "::1":
                status, body = error_body("forbidden", None, "Reloads are accepted from loopback only.")
                cycle.send_response(status, error_headers(), body)
            else:
                task = asyncio.get_running_loop().create_task(self._reload(cycle, self.reload))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                return
        elif path == "/metrics" and self.metrics_enabled:
            cycle.send_response(200, [(b"content-type", metrics.CONTENT_TYPE)], metrics.render())
        else:
            answer = self.health.answer(path)
            if answer is not None:
                cycle.send_response(answer[0], json_headers(), answer[1])
            else:
                status, body = error_body("not_found", None, "Not a metrics or health endpoint.")
                cycle.send_response(status, error_headers(), body)
        cycle.complete()

    async def _reload(
        self, cycle: RequestCycle, reload: Callable[[], Awaitable[tuple[int, dict[str, object]]]]
    ) -> None:
        try:
            status, doc = await reload()
            headers, body = json_headers(), orjson.dumps(doc)
        except Exception as e:
            status, body = error_body("internal_error", None, f"reload failed: {type(e).__name__}")
            headers = error_headers()
        try:
            if not cycle.proto.closing:  # the client may have gone while it reloaded
                cycle.send_response(status, headers, body)
        finally:
            cycle.complete()


ADMIN_RELOAD = "/admin/reload"
