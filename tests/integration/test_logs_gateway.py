"""Logging through a real gateway process: the access event's §1.4 fields, lifecycle
events, redaction, sampling, one file per worker, and the flush on SIGTERM into the
Elasticsearch and Splunk test servers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from auth_fixtures import SECRET, jwt_token
from harness import Gateway, GatewayFactory, ScriptedUpstream, bytes_handler

from logservers.elasticsearch import ElasticsearchServer
from logservers.splunk import SplunkServer

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ACCESS_FIELDS = {
    "timestamp", "level", "service", "component", "event_type", "correlation_id", "message", "method",
    "path", "client_ip", "user_agent", "request_size", "status", "duration_ms", "route_id", "upstream_id",
    "upstream_duration_ms", "response_size",
}  # fmt: skip


def read_events(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def logging_section(tmp: Path, sinks: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"level": "INFO", "spool_dir": str(tmp / "spool"), "sinks": sinks, **kw}


@pytest.fixture
def upstream(scripted: Callable[..., ScriptedUpstream]) -> Iterator[ScriptedUpstream]:
    yield scripted(bytes_handler)


def test_access_event_fields_lifecycle_and_redaction(
    gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "gw.log"
    gw = gateway(
        {"up": upstream.url},
        [
            {"id": "r1", "path": "/bytes/*", "upstream_id": "up"},
            {"id": "r2", "path": "/echo", "upstream_id": "up"},
        ],
        logging=logging_section(tmp_path, [{"type": "file", "file": {"path": str(log)}}], service="edge"),
    )
    with httpx.Client(base_url=gw.url) as c:
        r = c.get(
            "/bytes/1234?api_key=sekrit&email=joe@example.com&page=2",
            headers={"user-agent": "pytest/1", "x-request-id": "req-abc-123"},
        )
        assert r.status_code == 200
        assert c.post("/echo", content=b"x" * 77).status_code == 200
        assert c.get("/nowhere").status_code == 404
    assert gw.stop() == 0
    events = read_events(log)
    types = [e["event_type"] for e in events]
    assert types[0] == "config_loaded" and events[0]["message"] == "Configuration loaded"
    assert "listener_started" in types and types[-1] == "listener_stopped"
    access = [e for e in events if e["event_type"] == "request_completed"]
    assert len(access) == 3
    first, post, missing = access
    assert set(first) >= ACCESS_FIELDS
    assert RFC3339_MS.match(first["timestamp"])
    assert first["service"] == "edge" and first["level"] == "INFO" and first["component"] == "gateway"
    assert first["correlation_id"] == "req-abc-123" and first["method"] == "GET"
    assert first["path"] == "/bytes/1234?api_key=[REDACTED]&email=j***@example.com&page=2"
    assert first["client_ip"] == "127.0.0.1" and first["user_agent"] == "pytest/1"
    assert first["status"] == 200 and first["route_id"] == "r1" and first["upstream_id"] == "up"
    assert first["response_size"] == 1234 and first["request_size"] == 0
    assert first["duration_ms"] >= first["upstream_duration_ms"] > 0
    # Measured to the microsecond, not on the event loop's whole-millisecond clock.
    durations = [e[k] for e in access for k in ("duration_ms", "upstream_duration_ms") if e[k] is not None]
    assert any(d != int(d) for d in durations), durations
    assert post["request_size"] == 77 and post["method"] == "POST"
    assert missing["status"] == 404 and missing["level"] == "WARN" and missing["route_id"] is None
    assert missing["upstream_duration_ms"] is None and missing["error"] == "not_found"
    assert "user" not in first
    assert "sekrit" not in log.read_text() and "joe@" not in log.read_text()


def test_sampling_and_health_checks(
    gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    log = tmp_path / "gw.log"
    gw = gateway(
        {"up": upstream.url},
        logging=logging_section(tmp_path, [{"type": "file", "file": {"path": str(log)}}], sampling_rate=0.0),
    )
    with httpx.Client(base_url=gw.url) as c:
        for _ in range(20):
            assert c.get("/ok").status_code == 200
        c.get("/health/live")
    gw.stop()
    access = [e for e in read_events(log) if e["event_type"] == "request_completed"]
    assert access == []


def test_min_level_per_sink(gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path) -> None:
    info, errors = tmp_path / "info.log", tmp_path / "errors.log"
    sinks = [
        {"type": "file", "file": {"path": str(info)}},
        {"type": "file", "min_level": "ERROR", "file": {"path": str(errors)}},
    ]
    gw = gateway({"up": "http://127.0.0.1:9"}, logging=logging_section(tmp_path, sinks))
    with httpx.Client(base_url=gw.url) as c:
        assert c.get("/x").status_code == 502
    gw.stop()
    assert {e["level"] for e in read_events(errors)} == {"ERROR"}
    assert len(read_events(info)) > len(read_events(errors)) >= 1


def test_one_file_per_worker(gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path) -> None:
    log = tmp_path / "gw.log"
    gw = gateway(
        {"up": upstream.url},
        server={"workers": 2},
        logging=logging_section(tmp_path, [{"type": "file", "file": {"path": str(log)}}]),
    )
    for _ in range(40):
        with httpx.Client(base_url=gw.url) as c:  # new connections spread over both workers
            c.get("/a")
    gw.stop()
    files = sorted(p.name for p in tmp_path.glob("gw.log*"))
    assert files == ["gw.log.0", "gw.log.1"]
    access = [e for f in files for e in read_events(tmp_path / f) if e["event_type"] == "request_completed"]
    assert len(access) == 40
    loaded = [e for f in files for e in read_events(tmp_path / f) if e["event_type"] == "config_loaded"]
    assert len(loaded) == 1  # the early events go to worker 0 only


def test_sigterm_flushes_elasticsearch_and_splunk(
    gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    es = ElasticsearchServer().start()
    hec = SplunkServer("hec-token").start()
    try:
        sinks = [
            {"type": "elasticsearch", "elasticsearch": {"urls": [es.url], "flush_interval_secs": 60}},
            {
                "type": "splunk",
                "splunk": {
                    "endpoint": hec.url + "/services/collector",
                    "token": "hec-token",
                    "flush_interval_secs": 60,
                },
            },
        ]
        gw = gateway({"up": upstream.url}, logging=logging_section(tmp_path, sinks))
        with httpx.Client(base_url=gw.url) as c:
            for i in range(30):
                c.get(f"/n/{i}")
        assert gw.stop() == 0  # the batches are not full and the interval is long: SIGTERM sends them
        es_paths = sorted(d["path"] for d in es.docs.values() if d["event_type"] == "request_completed")
        assert es_paths == sorted(f"/n/{i}" for i in range(30))
        hec_paths = [
            e["event"]["path"] for e in hec.events if e["event"]["event_type"] == "request_completed"
        ]
        assert sorted(hec_paths) == es_paths
        assert es.protocol_errors == [] and hec.protocol_errors == []
    finally:
        es.stop()
        hec.stop()


def _jwt_gateway(
    gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path, **logging_options: Any
) -> tuple[Gateway, Path]:
    """A gateway guarding /s/* with an HS256 secret, logging to a file: (gateway, log path)."""
    log = tmp_path / "gw.log"
    gw = gateway(
        {"up": upstream.url},
        [{"id": "secure", "path": "/s/*", "upstream_id": "up", "auth_required": True}],
        auth={"jwt_secret": SECRET},
        logging=logging_section(tmp_path, [{"type": "file", "file": {"path": str(log)}}], **logging_options),
    )
    return gw, log


def test_user_and_auth_failures_in_access_events(
    gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    gw, log = _jwt_gateway(gateway, upstream, tmp_path, sampling_rate=0.0)
    tok = jwt_token()
    with httpx.Client(base_url=gw.url) as c:
        assert c.get("/s/x", headers={"authorization": f"Bearer {tok}"}).status_code == 200
        assert c.get("/s/x", headers={"authorization": "Bearer not-a-token"}).status_code == 401
    gw.stop()
    events = read_events(log)
    access = [e for e in events if e["event_type"] == "request_completed"]
    # sampling_rate 0: the 200 is sampled out, the auth failure is always logged
    assert [e["status"] for e in access] == [401]
    assert "user" not in access[0]
    failed = [e for e in events if e["event_type"] == "auth_failed"]
    assert len(failed) == 1 and "not-a-token" not in log.read_text()


def test_authenticated_user_is_in_the_access_event(
    gateway: GatewayFactory, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    gw, log = _jwt_gateway(gateway, upstream, tmp_path)
    tok = jwt_token(sub="carol@example.com")
    with httpx.Client(base_url=gw.url) as c:
        assert c.get("/s/x", headers={"authorization": f"Bearer {tok}"}).status_code == 200
    gw.stop()
    access = [e for e in read_events(log) if e["event_type"] == "request_completed"]
    assert access[0]["user"] == "c***@example.com"  # the user id, redacted like any e-mail
