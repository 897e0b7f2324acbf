"""The metrics listener (`observability.metrics_port`): /metrics, /health/* and /status.

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
from apigate.telemetry import metrics, status_html
from apigate.telemetry.basic_auth import CHALLENGE, BasicAuth
from apigate.telemetry.health import Health
from apigate.telemetry.status import StatusPage, is_loopback

HTML_HEADERS = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
# The page runs only its own inline script and style, and talks to nothing but its origin.
PAGE_POLICY = (
    b"content-security-policy",
    b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    b"img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
)

if TYPE_CHECKING:
    from apigate.http.server import RequestCycle, ServerState


class AdminApp:
    """Handler for the metrics listener."""

    def __init__(
        self,
        state: ServerState,
        health: Health,
        metrics_enabled: bool,
        status: StatusPage | None = None,
        basic_auth: BasicAuth | None = None,
        reload: Callable[[], Awaitable[tuple[int, dict[str, object]]]] | None = None,
    ) -> None:
        """`reload`: what `POST /admin/reload` runs (the composition root offers it only
        when this listener is bound to loopback); (status, JSON document)."""
        self.state = state
        self.health = health
        self.metrics_enabled = metrics_enabled
        self.status = status
        self.basic_auth = basic_auth
        self.reload = reload
        self.tasks: set[asyncio.Task[None]] = set()

    def handle(self, cycle: RequestCycle) -> None:
        path = cycle.target.split(b"?", 1)[0].decode("latin-1")
        if self.status is not None and path in ("/status", "/status.json"):
            self._status(cycle, self.status, path)
        elif path == ADMIN_RELOAD and self.reload is not None:
            if cycle.method != "POST":
                status, body = error_body("method_not_allowed", None)
                cycle.send_response(status, error_headers([(b"allow", b"POST")]), body)
            elif not is_loopback(cycle.proto.client_ip):
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

    def _status(self, cycle: RequestCycle, page: StatusPage, path: str) -> None:
        """The status page: read-only (GET/HEAD), behind basic auth when configured, and
        without it shown to loopback clients only unless `status_remote` says otherwise:
        the admin port is often reachable in-cluster (Prometheus scrapes it), the page is
        for the person on call (kubectl port-forward arrives from loopback)."""
        if cycle.method not in ("GET", "HEAD"):
            status, body = error_body("method_not_allowed", None, "The status page is read-only.")
            cycle.send_response(status, error_headers([(b"allow", b"GET, HEAD")]), body)
        elif (
            self.basic_auth is None
            and not page.cfg.observability.admin.status_remote
            and not is_loopback(cycle.proto.client_ip)
        ):
            status, body = error_body(
                "forbidden",
                None,
                "The status page answers loopback clients only; set observability.admin.basic_auth "
                "or observability.admin.status_remote.",
            )
            cycle.send_response(status, error_headers(), body)
        elif self.basic_auth is not None and not self.basic_auth.allows(
            next((v for n, v in cycle.headers if n == b"authorization"), None)
        ):
            status, body = error_body("unauthenticated", None)
            cycle.send_response(status, error_headers([CHALLENGE]), body)
        elif path == "/status.json":
            cycle.send_response(200, json_headers(), page.json())
        else:
            cycle.send_response(200, [*HTML_HEADERS, PAGE_POLICY], status_html.render(page.document()))

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
