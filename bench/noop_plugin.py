"""A plugin that does nothing, for bench/traffic_ab.sh: the cost of the plugin machinery
itself (the guard, a Python-level on_request call per request)."""

from __future__ import annotations

from apigate.plugins import Plugin, RequestContext, RequestOutcome


class Noop(Plugin):
    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        return None
