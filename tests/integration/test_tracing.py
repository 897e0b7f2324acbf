"""Traces from a real apigate, received by an in-process OTLP/HTTP collector that decodes them.

The collector is an http.server thread on 127.0.0.1 that parses each POST /v1/traces body
as an OTLP ExportTraceServiceRequest (protobuf), as Jaeger's or the OpenTelemetry
Collector's OTLP/HTTP receiver would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from auth_fixtures import SECRET
from harness import HOST, GatewayFactory, ScriptedUpstream, echo_handler, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str
    attrs: dict[str, Any]
    status: int
    start: int
    end: int
    service: str


class Collector:
    """OTLP/HTTP receiver: POST /v1/traces with a protobuf body."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.posts: list[dict[str, str]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.posts.append({"path": self.path, "content-type": self.headers["Content-Type"]})
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                for rs in req.resource_spans:
                    res = {a.key: a.value.string_value for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            attrs: dict[str, Any] = {}
                            for a in s.attributes:
                                v = a.value
                                attrs[a.key] = v.int_value if v.HasField("int_value") else v.string_value
                            collector.spans.append(
                                Span(
                                    s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                                    s.parent_span_id.hex(), attrs, s.status.code,
                                    s.start_time_unix_nano, s.end_time_unix_nano,
                                    res.get("service.name", ""),
                                )
                            )  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/v1/traces"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def find(self, predicate: Any, timeout: float = 15) -> list[Span]:
        found: list[Span] = []

        def check() -> bool:
            found[:] = [s for s in list(self.spans) if predicate(s)]
            return bool(found)

        assert wait_until(check, timeout, interval=0.1), f"no such span among {self.spans}"
        return found


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.stop()


def traced_gateway(
    gateway: GatewayFactory, upstream: ScriptedUpstream, collector: Collector, rate: float = 1.0
) -> str:
    routes = [
        {"id": "public", "path": "/public/*", "upstream_id": "app"},
        {"id": "secure", "path": "/secure/*", "upstream_id": "app", "auth_required": True},
    ]
    gw = gateway(
        {"app": upstream.url},
        routes,
        observability={
            "metrics_enabled": False,
            "tracing": {
                "enabled": True,
                "endpoint": collector.endpoint,
                "service_name": "apigate-test",
                "sampling_rate": rate,
            },
        },
        auth={"jwt_secret": SECRET},
    )
    return gw.url


def upstream_traceparent(upstream: ScriptedUpstream, path: str) -> str:
    (req,) = upstream.requests_to(path)
    value = req.header("traceparent")
    assert value is not None
    return value


def test_server_and_client_spans_with_traceparent(
    gateway: GatewayFactory, scripted: Any, collector: Collector
) -> None:
    up: ScriptedUpstream = scripted(echo_handler)
    base = traced_gateway(gateway, up, collector)
    incoming = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    r = httpx.get(
        base + "/public/one", headers={"traceparent": incoming, "tracestate": "vendor=x"}, timeout=10
    )
    assert r.status_code == 200

    # Upstream got the same trace, a new parent (the gateway's client span), still sampled.
    version, trace_id, parent_id, flags = upstream_traceparent(up, "/public/one").split("-")
    assert (version, trace_id, flags) == ("00", CLIENT_TRACE, "01")
    assert parent_id != CLIENT_SPAN
    assert (up.requests_to("/public/one")[0].header("tracestate") or "") == "vendor=x"

    (server,) = collector.find(lambda s: s.trace_id == CLIENT_TRACE and s.kind == 2)  # SERVER
    (client,) = collector.find(lambda s: s.trace_id == CLIENT_TRACE and s.kind == 3)  # CLIENT
    assert server.parent == CLIENT_SPAN
    assert client.parent == server.span_id
    assert client.span_id == parent_id
    assert server.name == "GET /public/*"
    assert server.service == "apigate-test"
    assert server.attrs["http.route"] == "/public/*"
    assert server.attrs["apigate.route"] == "public"
    assert server.attrs["http.response.status_code"] == 200
    assert server.attrs["apigate.upstream"] == "app"
    assert client.attrs["http.response.status_code"] == 200
    assert server.start <= client.start <= client.end <= server.end
    assert collector.posts[0]["path"] == "/v1/traces"
    assert collector.posts[0]["content-type"] == "application/x-protobuf"


def test_rejected_request_has_a_server_span_only(
    gateway: GatewayFactory, scripted: Any, collector: Collector
) -> None:
    up: ScriptedUpstream = scripted(echo_handler)
    base = traced_gateway(gateway, up, collector)
    assert httpx.get(base + "/secure/x", timeout=10).status_code == 401
    (server,) = collector.find(lambda s: s.attrs.get("apigate.route") == "secure")
    assert server.attrs["http.response.status_code"] == 401
    assert server.attrs["apigate.error"] == "unauthenticated"
    assert server.parent == ""  # a root span: the client sent no traceparent
    # Give the exporter a moment more: no client span shows up for that trace.
    httpx.get(base + "/public/flush", timeout=10)
    collector.find(lambda s: s.attrs.get("apigate.route") == "public" and s.kind == 2)
    assert not [s for s in collector.spans if s.trace_id == server.trace_id and s.kind == 3]


def test_sampling_is_parent_based(gateway: GatewayFactory, scripted: Any, collector: Collector) -> None:
    """sampling_rate 0: new traces are not exported, a sampled parent's are; both propagate."""
    up: ScriptedUpstream = scripted(echo_handler)
    base = traced_gateway(gateway, up, collector, rate=0.0)
    assert httpx.get(base + "/public/unsampled", timeout=10).status_code == 200
    incoming = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    assert (
        httpx.get(base + "/public/sampled", headers={"traceparent": incoming}, timeout=10).status_code == 200
    )
    collector.find(lambda s: s.trace_id == CLIENT_TRACE and s.kind == 2)
    assert all(s.trace_id == CLIENT_TRACE for s in collector.spans)
    # The unsampled request still carried a (not-sampled) traceparent upstream.
    flags = int(upstream_traceparent(up, "/public/unsampled").rsplit("-", 1)[1], 16)
    assert flags & 1 == 0  # not sampled (0x02 is trace-context level 2's "random trace id")
    assert upstream_traceparent(up, "/public/sampled").split("-")[1] == CLIENT_TRACE


def test_guide_jaeger_example_starts_and_says_where_spans_go(gateway: GatewayFactory, scripted: Any) -> None:
    """backend: jaeger with the Thrift URL of the guide: apigate starts, and warns it sends OTLP to 4318."""
    up: ScriptedUpstream = scripted(echo_handler)
    gw = gateway(
        {"app": up.url},
        observability={
            "metrics_enabled": False,
            "tracing": {
                "enabled": True,
                "backend": "jaeger",
                "endpoint": f"http://{HOST}:14268/api/traces",
                "service_name": "api-gateway",
                "sampling_rate": 0.1,
            },
        },
    )
    assert httpx.get(gw.url + "/x", timeout=10).status_code == 200

    def logged() -> list[dict[str, Any]]:
        events = []
        for line in gw.stdout().splitlines():
            if '"tracing_started"' in line:
                events.append(json.loads(line))
        return events

    assert wait_until(lambda: bool(logged()), 10)
    (event,) = logged()
    assert event["level"] == "WARN"
    assert event["endpoint"] == f"http://{HOST}:4318/v1/traces"
    assert event["configured_endpoint"] == f"http://{HOST}:14268/api/traces"
    assert "Thrift" in event["message"] and "OTLP/HTTP" in event["message"]
