"""Writing a plugin: everything a plugin module imports from apigate, in one place.

```python
from apigate.plugins import Plugin, RequestContext, RequestOutcome, Response

class AuditFilter(Plugin):
    class Config(BaseModel): ...          # validates `plugins[].config`
    def on_request(self, ctx: RequestContext) -> RequestOutcome: ...
```

`Plugin` is the built-in filters' contract (apigate/gateway/filters.py) plus the
validated settings in `self.config`; docs/PLUGINS.md is the guide, and
examples/plugins/mycompany/audit.py a complete plugin.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from apigate.gateway.filters import Filter, RequestContext, RequestOutcome, Response
from apigate.gateway.router import Route
from apigate.http.errors import error_body, json_headers
from apigate.http.headers import Headers
from apigate.logs.events import emit


class Plugin(Filter):
    """Base class of a plugin: implement the phases you need (on_request, on_response,
    on_complete) and, if it has any, the lifecycle (start, close)."""

    Config: ClassVar[type[BaseModel] | None] = None
    """A pydantic model for `plugins[].config`; None: the raw dict is passed."""

    def __init__(self, config: Any) -> None:
        self.config = config


def json_error(ctx: RequestContext, status: int, error: str, message: str) -> Response:
    """A local reply in the gateway's error shape: `{"error", "message", "correlation_id"}`."""
    import orjson

    body = orjson.dumps({"error": error, "message": message, "correlation_id": ctx.request_id})
    return Response(status, json_headers(), body, error)


__all__ = [
    "Filter",
    "Headers",
    "Plugin",
    "RequestContext",
    "RequestOutcome",
    "Response",
    "Route",
    "emit",
    "error_body",
    "json_error",
]
