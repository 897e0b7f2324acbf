"""OpenTelemetry tracing: a server span per request, a client span for the upstream call.

Off (`observability.tracing.enabled: false`, the default) it costs nothing: the filter is
not in any chain and this module's OpenTelemetry imports never run.

On, the per-request work is: parse the client's W3C `traceparent` (if any), start the
two spans with explicit timestamps, and add `traceparent` (the client span's context) to
the upstream request. Attributes, status and end times are set in `on_complete`, after
the response; spans are exported by the SDK's BatchSpanProcessor from its own thread
(bounded queue, drops when full), so a slow or absent collector never slows a request.

Protocol: apigate speaks OTLP/HTTP (protobuf) only. `backend: jaeger` means "a Jaeger
collector", which ingests OTLP on port 4318 (`/v1/traces`). The guide's example points at
`:14268/api/traces`, Jaeger's Thrift-over-HTTP endpoint: rather than send OTLP to a
Thrift port, apigate sends to the same host's OTLP port and says so in `apigate check`
and in the startup log (`resolve_endpoint`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from apigate.gateway.filters import Filter, RequestContext, RequestOutcome
from apigate.http import clock
from apigate.logs import events

if TYPE_CHECKING:
    from apigate.config.schema import TracingConfig

DEFAULT_OTLP_ENDPOINT = "http://localhost:4318/v1/traces"
JAEGER_OTLP_PORT = 4318
JAEGER_THRIFT_PORTS = (14268, 14250, 6831, 6832)  # Thrift HTTP, gRPC (model.proto), agent UDP
EXPORT_DELAY_MS = 1000  # the batch processor exports at least this often
EXPORT_TIMEOUT_S = 5.0
MAX_QUEUE = 4096  # spans waiting for export; more are dropped (and counted by the SDK)

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"


def resolve_endpoint(cfg: TracingConfig) -> tuple[str, str]:
    """(OTLP/HTTP URL spans go to, one sentence explaining it for check and the startup log)."""
    endpoint = cfg.endpoint
    if endpoint is None:
        return DEFAULT_OTLP_ENDPOINT, f"spans go as OTLP/HTTP to {DEFAULT_OTLP_ENDPOINT} (no endpoint set)"
    parts = urlsplit(endpoint)
    thrift = parts.port in JAEGER_THRIFT_PORTS or parts.path.rstrip("/") == "/api/traces"
    if cfg.backend == "jaeger" and thrift:
        host = parts.hostname or "localhost"
        netloc = f"[{host}]" if ":" in host else host
        url = urlunsplit((parts.scheme or "http", f"{netloc}:{JAEGER_OTLP_PORT}", "/v1/traces", "", ""))
        return url, (
            f"spans go as OTLP/HTTP to {url}: {endpoint} is Jaeger's Thrift endpoint, which apigate "
            f"does not speak; Jaeger collectors accept OTLP on port {JAEGER_OTLP_PORT}"
        )
    if thrift:
        return endpoint, (
            f"spans go as OTLP/HTTP to {endpoint}; that looks like a Jaeger Thrift endpoint, "
            f"set backend: jaeger or use the collector's OTLP port ({JAEGER_OTLP_PORT}, /v1/traces)"
        )
    return endpoint, f"spans go as OTLP/HTTP to {endpoint}"


def describe(cfg: TracingConfig) -> str:
    """One phrase for `apigate check`."""
    if not cfg.enabled:
        return "tracing off"
    return f"tracing: {resolve_endpoint(cfg)[1]} (sampling {cfg.sampling_rate:g})"


class Tracing:
    """The SDK pieces: provider (resource, parent-based ratio sampler), batch exporter."""

    def __init__(self, cfg: TracingConfig) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        self.cfg = cfg
        self.endpoint, self.explanation = resolve_endpoint(cfg)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name}),
            sampler=ParentBased(TraceIdRatioBased(cfg.sampling_rate)),
        )
        exporter = OTLPSpanExporter(endpoint=self.endpoint, timeout=EXPORT_TIMEOUT_S)
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=MAX_QUEUE, schedule_delay_millis=EXPORT_DELAY_MS)
        )
        self.tracer = self.provider.get_tracer("apigate")

    async def shutdown(self) -> None:
        """Flush what is queued (bounded by the exporter's timeout), off the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.provider.shutdown)


class TracingFilter(Filter):
    """Starts the spans on the way in (so `traceparent` can go upstream), ends them after."""

    name = "tracing"
    priority = 99_000  # right after correlation: rejected requests get a server span too

    def __init__(self, tracing: Tracing) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracing = tracing
        self.tracer = tracing.tracer
        self.propagator = TraceContextTextMapPropagator()
        self.server_kind = SpanKind.SERVER
        self.client_kind = SpanKind.CLIENT
        self.in_context = set_span_in_context
        self.clock = clock.now  # ctx.start's clock
        # ctx.start is monotonic; spans want wall-clock nanoseconds.
        self.offset_ns = time.time_ns() - int(clock.now() * 1e9)

    async def start(self) -> None:
        """Say where spans go; WARN when that is not what the configuration says (a Jaeger
        Thrift URL, which apigate does not speak)."""
        tracing, t = self.tracing, self.tracing.cfg
        rerouted = tracing.endpoint != t.endpoint and t.endpoint is not None
        events.emit(
            "WARN" if rerouted or "Thrift" in tracing.explanation else "INFO",
            "telemetry",
            "tracing_started",
            f"Tracing: {tracing.explanation}",
            endpoint=tracing.endpoint,
            configured_endpoint=t.endpoint,
            backend=t.backend,
            sampling_rate=t.sampling_rate,
            service_name=t.service_name,
        )

    async def close(self) -> None:
        """Flush the spans still queued (bounded by the exporter's timeout)."""
        await self.tracing.shutdown()

    def on_request(self, ctx: RequestContext) -> RequestOutcome:
        cycle = ctx.cycle
        carrier: dict[str, str] = {}
        for field, value in cycle.headers:
            if field in (TRACEPARENT, TRACESTATE):
                carrier[field.decode()] = value.decode("latin-1")
        parent = self.propagator.extract(carrier) if carrier else None
        offset = self.offset_ns
        start = int(ctx.start * 1e9) + offset
        route = ctx.route
        # "{method} {http.route}" (OpenTelemetry HTTP conventions): the route's path template.
        name = f"{ctx.method} {route.config.path}" if route is not None else ctx.method
        server = self.tracer.start_span(name, parent, kind=self.server_kind, start_time=start)
        client = None
        if route is not None:
            client = self.tracer.start_span(
                f"{ctx.method} {route.upstream_id}",
                self.in_context(server),
                kind=self.client_kind,
                start_time=start,
            )
            sc = client.get_span_context()
            headers = [h for h in cycle.headers if h[0] != TRACEPARENT and h[0] != TRACESTATE]
            headers.append(
                (TRACEPARENT, b"00-%032x-%016x-%02x" % (sc.trace_id, sc.span_id, int(sc.trace_flags)))
            )
            if sc.trace_state:
                headers.append((TRACESTATE, sc.trace_state.to_header().encode("latin-1")))
            cycle.headers = headers
        ctx.trace_spans = (server, client)
        return None

    def on_complete(self, ctx: RequestContext) -> None:
        spans = ctx.trace_spans
        if spans is None:
            return
        server, client = spans
        if not server.is_recording():
            return
        from opentelemetry.trace import Status, StatusCode

        offset = self.offset_ns
        end = int(self.clock() * 1e9) + offset
        status = ctx.status
        route = ctx.route
        attrs: dict[str, Any] = {
            "http.request.method": ctx.method,
            "apigate.route": route.id if route is not None else "unmatched",
            "url.path": ctx.path,
            "http.response.status_code": status,
        }
        if route is not None:
            attrs["http.route"] = route.config.path
        if ctx.upstream_id is not None:
            attrs["apigate.upstream"] = ctx.upstream_id
        if ctx.user is not None:
            attrs["enduser.id"] = ctx.user
        if ctx.error is not None:
            attrs["apigate.error"] = ctx.error
        if ctx.request_id:
            attrs["apigate.request_id"] = ctx.request_id
        server.set_attributes(attrs)
        if status >= 500:
            server.set_status(Status(StatusCode.ERROR))
        if client is not None and (ctx.upstream_duration is not None or ctx.upstream_failure is not None):
            up_end = end
            if ctx.upstream_duration is not None:
                up_end = int((ctx.start + ctx.upstream_duration) * 1e9) + offset
                client.set_attribute("http.response.status_code", status)
            if ctx.upstream_failure is not None:
                client.set_attribute("apigate.upstream_failure", ctx.upstream_failure)
                client.set_status(Status(StatusCode.ERROR, ctx.upstream_failure))
            elif status >= 500:
                client.set_status(Status(StatusCode.ERROR))
            client.set_attribute("apigate.upstream", ctx.upstream_id or "")
            client.end(end_time=up_end)
        server.end(end_time=end)
