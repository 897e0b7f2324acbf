"""Tracing configuration: where spans go (and never a protocol to another's port), and off means off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apigate.config.schema import TracingConfig
from apigate.telemetry.tracing import describe, resolve_endpoint

REPO = Path(__file__).resolve().parents[2]


def test_guide_jaeger_thrift_endpoint_goes_to_the_otlp_port() -> None:
    cfg = TracingConfig(
        enabled=True, backend="jaeger", endpoint="http://jaeger-collector:14268/api/traces", sampling_rate=0.1
    )
    url, why = resolve_endpoint(cfg)
    assert url == "http://jaeger-collector:4318/v1/traces"
    assert "Thrift" in why and "14268" in why and "4318" in why
    assert describe(cfg).startswith(
        "tracing: spans go as OTLP/HTTP to http://jaeger-collector:4318/v1/traces"
    )


@pytest.mark.parametrize(
    ("backend", "endpoint", "expected"),
    [
        ("otlp", None, "http://localhost:4318/v1/traces"),
        ("otlp", "http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ("jaeger", "http://jaeger:4318/v1/traces", "http://jaeger:4318/v1/traces"),
        (
            "jaeger",
            "https://jaeger.example.com:14268/api/traces",
            "https://jaeger.example.com:4318/v1/traces",
        ),
    ],
)
def test_resolve_endpoint(backend: str, endpoint: str | None, expected: str) -> None:
    cfg = TracingConfig(enabled=True, backend=backend, endpoint=endpoint)  # type: ignore[arg-type]
    assert resolve_endpoint(cfg)[0] == expected


def test_otlp_backend_pointed_at_thrift_is_sent_as_configured_but_flagged() -> None:
    url, why = resolve_endpoint(TracingConfig(enabled=True, endpoint="http://j:14268/api/traces"))
    assert url == "http://j:14268/api/traces"
    assert "Thrift" in why and "backend: jaeger" in why


def test_disabled() -> None:
    assert describe(TracingConfig()) == "tracing off"


def test_check_explains_the_guide_example(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "observability:\n  tracing:\n    enabled: true\n    backend: jaeger\n"
        '    endpoint: "http://jaeger-collector:14268/api/traces"\n    sampling_rate: 0.1\n'
        "upstreams: [{id: u, base_url: 'http://127.0.0.1:1'}]\n"
        "routes: [{id: r, path: /x, upstream_id: u}]\n"
    )
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "apigate"), "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "http://jaeger-collector:4318/v1/traces" in out.stdout
    assert "Thrift" in out.stdout


def test_tracing_off_never_imports_opentelemetry() -> None:
    code = (
        "import asyncio, sys\n"
        "from apigate.config.schema import Config\n"
        "from apigate.server import build_filters\n"
        "cfg = Config.model_validate({'upstreams': [{'id': 'u', 'base_url': 'http://127.0.0.1:1'}],"
        " 'routes': [{'id': 'r', 'path': '/x', 'upstream_id': 'u'}]})\n"
        "names = [f.name for f in build_filters(cfg)]\n"
        "assert 'tracing' not in names, names\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
