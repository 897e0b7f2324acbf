"""Loading `plugins:` into the filter chain, each plugin behind a guard.

A plugin is imported (`module: "package.module:ClassName"`, after `path` goes on the
import path), its `config:` validated by the class's `Config` model (the configuration
check already did that with file and line), and the instance wrapped in a `PluginGuard`:
a filter that calls the plugin's phases and turns any exception into

- on the way in: a 500 JSON answer to that request (no traceback reaches the client),
- always: a `plugin_failed` ERROR event naming the plugin and the phase, and one more
  `plugin_errors_total{plugin}`,

so that a broken plugin costs requests, never the worker. The guard has only the phases
the plugin implements, so a plugin without `on_response` adds no call on the way out.

Which routes: the ones that list the plugin in `routes[].plugins`; a plugin that no route
lists runs on every route. Its own `applies_to(route)` may narrow that further.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterator
from typing import Any

from apigate.config.plugins import PluginImportError, config_model, import_plugin
from apigate.config.schema import Config, PluginConfig
from apigate.gateway.filters import Filter, RequestContext, RequestOutcome, Response, Sample
from apigate.gateway.router import Route
from apigate.http.headers import Headers
from apigate.logs import events
from apigate.telemetry.names import PLUGIN_ERRORS_TOTAL

PHASES = ("on_request", "on_response", "on_complete")


class PluginStartError(OSError):
    """A plugin could not be built: the CLI prints it as one line ("cannot start: ...")."""


class PluginGuard(Filter):
    """Runs one plugin's phases; exceptions are answered, logged and counted, never raised."""

    def __init__(self, plugin: Filter, plugin_name: str, routes: frozenset[str] | None) -> None:
        self.plugin = plugin
        self.plugin_name = plugin_name
        self.routes = routes  # None: every route
        self.errors = 0

    def applies_to(self, route: Route | None) -> bool:
        if route is None or (self.routes is not None and route.id not in self.routes):
            return False
        try:
            return bool(self.plugin.applies_to(route))
        except Exception as e:
            self._failed(None, "applies_to", e)
            return False

    # The phases, installed on each guard's class only when the plugin has them.
    def _on_request(self, ctx: RequestContext) -> RequestOutcome:
        try:
            outcome = self.plugin.on_request(ctx)
        except Exception as e:
            return self._failed(ctx, "on_request", e)
        if outcome is None or isinstance(outcome, Response):
            return outcome
        if not inspect.isawaitable(outcome):
            bad = TypeError(
                f"on_request returned {type(outcome).__name__}, not a Response, None or awaitable"
            )
            return self._failed(ctx, "on_request", bad)
        return self._awaited(ctx, outcome)

    async def _awaited(self, ctx: RequestContext, pending: Awaitable[Response | None]) -> Response | None:
        try:
            result = await pending
        except Exception as e:
            return self._failed(ctx, "on_request", e)
        if result is not None and not isinstance(result, Response):
            bad = TypeError(f"on_request returned {type(result).__name__}, not a Response or None")
            return self._failed(ctx, "on_request", bad)
        return result

    def _on_response(self, ctx: RequestContext, status: int, headers: Headers) -> None:
        try:
            self.plugin.on_response(ctx, status, headers)
        except Exception as e:
            self._failed(ctx, "on_response", e)

    def _on_complete(self, ctx: RequestContext) -> None:
        try:
            self.plugin.on_complete(ctx)
        except Exception as e:
            self._failed(ctx, "on_complete", e)

    def _failed(self, ctx: RequestContext | None, phase: str, error: Exception) -> Response | None:
        self.errors += 1
        route = ctx.route if ctx is not None else None
        events.emit(
            "ERROR",
            "plugin",
            "plugin_failed",
            f"Plugin {self.plugin_name} raised in {phase}",
            plugin=self.plugin_name,
            phase=phase,
            error=repr(error)[:300],
            correlation_id=ctx.request_id if ctx is not None else None,
            route=route.id if route is not None else None,
        )
        return Response.error_reply("internal_error", ctx) if ctx is not None else None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            await self.plugin.start()
        except Exception as e:
            self._failed(None, "start", e)

    async def close(self) -> None:
        try:
            await self.plugin.close()
        except Exception as e:
            self._failed(None, "close", e)

    def samples(self) -> Iterator[Sample]:
        yield PLUGIN_ERRORS_TOTAL, (self.plugin_name,), float(self.errors)


def _overrides(plugin: object, phase: str) -> bool:
    return getattr(type(plugin), phase, None) is not getattr(Filter, phase)


def guard(plugin: Filter, name: str, priority: int, routes: frozenset[str] | None) -> PluginGuard:
    """A guard whose class has the plugin's name, priority and phases (FilterChain reads
    them from the class: a phase the class does not override is never called)."""
    namespace: dict[str, Any] = {"name": name, "priority": priority}
    for phase in PHASES:
        if _overrides(plugin, phase):
            namespace[phase] = getattr(PluginGuard, "_" + phase)
    cls = type(f"PluginGuard[{name}]", (PluginGuard,), namespace)
    instance: PluginGuard = cls(plugin, name, routes)
    return instance


def build(spec: PluginConfig, routes: frozenset[str] | None) -> PluginGuard:
    try:
        cls = import_plugin(spec.module, spec.path)
    except PluginImportError as e:
        raise PluginStartError(f"plugin '{spec.name}': {e}") from None
    model = config_model(cls)
    try:
        settings = model.model_validate(spec.config) if model is not None else dict(spec.config)
        plugin = cls(settings)
    except Exception as e:
        raise PluginStartError(
            f"plugin '{spec.name}' ({spec.module}) failed to initialise: {e!r}"[:400]
        ) from None
    if not isinstance(plugin, Filter):
        raise PluginStartError(
            f"plugin '{spec.name}': {spec.module} is not a Filter (subclass apigate.plugins.Plugin)"
        )
    priority = spec.priority if spec.priority is not None else type(plugin).priority
    return guard(plugin, spec.name, priority, routes)


def build_plugins(cfg: Config) -> list[Filter]:
    """One guarded filter per `plugins:` entry, with the routes it runs on."""
    out: list[Filter] = []
    for spec in cfg.plugins:
        listing = frozenset(r.id for r in cfg.routes if spec.name in r.plugins)
        out.append(build(spec, listing or None))
    return out
