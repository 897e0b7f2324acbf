"""The access event (logs/access.py, encoded by the pipeline): whatever a client sends, the
line is one valid JSON object holding exactly the values, in the §1.4 order."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from apigate.logs.pipeline import Pipeline
from apigate.logs.record import rfc3339
from apigate.logs.redact import redact

FIELDS = [
    "timestamp", "level", "service", "component", "event_type", "correlation_id", "message",
    "method", "path", "client_ip", "user_agent", "request_size", "status", "duration_ms",
    "route_id", "upstream_id", "upstream_duration_ms", "response_size", "event_id",
]  # fmt: skip

# Any string a client can get into the event: quotes, backslashes, control characters,
# line separators, non-BMP characters (not lone surrogates: no UTF-8 carries them).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
latin1 = st.binary(max_size=40)


def snapshot(**over: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "service": "api-gateway", "now": 10.5, "start": 10.25, "levelno": 20, "status": 200,
        "rid": "id-1", "method": "GET", "path": "/a", "query": b"", "client_ip": "127.0.0.1",
        "headers": [(b"host", b"x")], "clen": None, "route_id": "r", "upstream_id": "up",
        "up": 0.125, "size": 52, "user": None, "error": None,
    }  # fmt: skip
    values.update(over)
    return tuple(values.values())


def decode(snap: tuple[Any, ...], redaction: bool = False) -> dict[str, Any]:
    rec = Pipeline(redaction=redaction).access_record(snap, 1700000000.0)  # type: ignore[arg-type]
    out: dict[str, Any] = orjson.loads(rec.json)
    assert out["event_id"] == rec.eid
    return out


@settings(max_examples=300, deadline=None)
@given(
    service=text, rid=text, method=text, path=text, query=latin1, client_ip=text, ua=latin1,
    route_id=st.none() | text, upstream_id=st.none() | text, user=st.none() | text,
    error=st.none() | text, clen=st.none() | st.integers(0, 2**40),
    duration=st.floats(0, 1e5), up=st.none() | st.floats(0, 1e5),
)  # fmt: skip
def test_any_value_comes_back_exactly_from_valid_json(
    service: str, rid: str, method: str, path: str, query: bytes, client_ip: str, ua: bytes,
    route_id: str | None, upstream_id: str | None, user: str | None, error: str | None,
    clen: int | None, duration: float, up: float | None,
) -> None:  # fmt: skip
    snap = snapshot(
        service=service, rid=rid, method=method, path=path, query=query, client_ip=client_ip,
        headers=[(b"user-agent", ua)], route_id=route_id, upstream_id=upstream_id, user=user,
        error=error, clen=clen, now=100.0 + duration, start=100.0, up=up,
    )  # fmt: skip
    ev = decode(snap)
    expected_keys = FIELDS + (["user"] if user is not None else []) + (["error"] if error is not None else [])
    assert list(ev) == expected_keys
    assert ev["service"] == service and ev["correlation_id"] == rid and ev["method"] == method
    assert ev["path"] == path + query.decode("latin-1") and ev["user_agent"] == ua.decode("latin-1")
    assert ev["client_ip"] == client_ip and ev["route_id"] == route_id and ev["upstream_id"] == upstream_id
    assert ev.get("user") == user and ev.get("error") == error
    assert ev["request_size"] == (clen or 0) and ev["status"] == 200 and ev["response_size"] == 52
    # durations to the microsecond (the clock's difference, then rounded once)
    assert ev["duration_ms"] == int((100.0 + duration - 100.0) * 1_000_000 + 0.5) / 1000
    assert ev["upstream_duration_ms"] == (None if up is None else int(up * 1_000_000 + 0.5) / 1000)
    assert ev["timestamp"] == rfc3339((100.0 + duration) + 1700000000.0)


def test_absent_values_are_null_and_levels_follow_the_status() -> None:
    ev = decode(snapshot(route_id=None, upstream_id=None, up=None, levelno=40, status=502))
    assert ev["user_agent"] is None and ev["route_id"] is None and ev["upstream_duration_ms"] is None
    assert ev["level"] == "ERROR" and ev["status"] == 502 and ev["timestamp"] == "2023-11-14T22:13:30.500Z"
    assert decode(snapshot(levelno=30))["level"] == "WARN"


@settings(max_examples=200, deadline=None)
@given(path=text, query=latin1, ua=latin1, user=text, rid=text)
def test_what_redaction_leaves_is_what_the_full_walk_would_leave(
    path: str, query: bytes, ua: bytes, user: str, rid: str
) -> None:
    """The fused redaction only looks at the four client strings, and only when a one-character
    test says they might hold a secret: the full walk over the decoded event finds nothing more."""
    snap = snapshot(path="/" + path, query=b"?" + query, headers=[(b"user-agent", ua)], user=user, rid=rid)
    ev = decode(snap, redaction=True)
    for k in ("path", "user_agent", "user", "correlation_id"):
        assert redact({k: ev[k]}) == {k: ev[k]}


def test_other_formats_start_from_the_same_event() -> None:
    snap = snapshot(user="bob", query=b"?page=2")
    flat = orjson.loads(Pipeline(structured=False).access_record(snap, 0.0).json)
    assert flat["event_type"] == "request_completed" and "path=/a?page=2" in flat["message"]
    assert "user=bob" in flat["message"] and "status" not in flat
    rec = Pipeline(text=True).access_record(snap, 0.0)
    assert rec.text is not None and b"INFO gateway Request completed" in rec.text
    assert b"status=200" in rec.text and orjson.loads(rec.json)["status"] == 200
