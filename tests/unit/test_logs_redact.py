"""Every redaction rule of guide §1.5, as a table, plus nesting and the query in `path`."""

from __future__ import annotations

from typing import Any

import pytest

from apigate.logs.redact import REDACTED, redact, redact_text

CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("session token: first 4", {"session_token": "abcdef123456"}, {"session_token": "abcd****"}),
    ("session id: first 4", {"session_id": "s3cr3tvalue"}, {"session_id": "s3cr****"}),
    ("X-Session-Token header name", {"X-Session-Token": "zzzz9999"}, {"X-Session-Token": "zzzz****"}),
    ("bearer", {"authorization": "Bearer eyJhbGciOi.x.y"}, {"authorization": "Bearer eyJh****"}),
    ("Authorization header name", {"Authorization": "bearer abcdefgh"}, {"Authorization": "Bearer abcd****"}),
    ("basic auth", {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Basic " + REDACTED}),
    ("x-api-key", {"X-API-Key": "k-123456"}, {"X-API-Key": REDACTED}),
    ("api_key", {"api_key": "k"}, {"api_key": REDACTED}),
    ("apikey", {"apikey": "k"}, {"apikey": REDACTED}),
    ("key", {"key": "k"}, {"key": REDACTED}),
    ("password", {"password": "hunter2"}, {"password": REDACTED}),
    ("passwd", {"passwd": "hunter2"}, {"passwd": REDACTED}),
    ("secret", {"secret": "s"}, {"secret": REDACTED}),
    ("token", {"token": "t"}, {"token": REDACTED}),
    ("suffix _secret", {"client_secret": "s"}, {"client_secret": REDACTED}),
    ("suffix _token", {"refresh_token": "t"}, {"refresh_token": REDACTED}),
    ("numeric secret", {"password": 1234}, {"password": REDACTED}),
    ("email in a field", {"user": "alice@example.com"}, {"user": "a***@example.com"}),
    (
        "email inside text",
        {"message": "sent to bob.smith@mail.example.org and carol@x.io"},
        {"message": "sent to b***@mail.example.org and c***@x.io"},
    ),
    (
        "bearer inside text",
        {"message": "header was Bearer abcdefghijk here"},
        {"message": "header was Bearer abcd**** here"},
    ),
    (
        "query in path",
        {"path": "/api/users?api_key=abc&password=p&token=t&apikey=1&key=2&passwd=3&secret=4&page=2"},
        {
            "path": "/api/users?api_key=[REDACTED]&password=[REDACTED]&token=[REDACTED]"
            "&apikey=[REDACTED]&key=[REDACTED]&passwd=[REDACTED]&secret=[REDACTED]&page=2"
        },
    ),
    ("session in query", {"path": "/a?session=abcdefgh"}, {"path": "/a?session=abcd****"}),
    ("email in query", {"path": "/a?email=joe%40example.com"}, {"path": "/a?email=j***@example.com"}),
    (
        "nested dict",
        {"headers": {"authorization": "Bearer 12345678"}},
        {"headers": {"authorization": "Bearer 1234****"}},
    ),
    (
        "nested list",
        {"items": [{"password": "x"}, "dan@example.com"]},
        {"items": [{"password": REDACTED}, "d***@example.com"]},
    ),
    (
        "untouched",
        {"path": "/api/users?page=2", "status": 200, "user": "u1"},
        {"path": "/api/users?page=2", "status": 200, "user": "u1"},
    ),
]


@pytest.mark.parametrize(("name", "event", "expected"), CASES, ids=[c[0] for c in CASES])
def test_redaction_rule(name: str, event: dict[str, Any], expected: dict[str, Any]) -> None:
    assert redact(event) == expected


def test_unchanged_event_is_returned_as_is() -> None:
    ev = {"message": "hello", "status": 200, "path": "/x"}
    assert redact(ev) is ev


def test_input_is_not_modified() -> None:
    ev = {"password": "p", "inner": {"token": "t"}}
    redact(ev)
    assert ev == {"password": "p", "inner": {"token": "t"}}


def test_redact_text_leaves_plain_text() -> None:
    assert redact_text("no secrets here") == "no secrets here"


def test_access_event_fast_path_matches_the_full_walk() -> None:
    import orjson

    from apigate.logs.pipeline import Pipeline

    headers = [(b"host", b"x"), (b"user-agent", b"curl Bearer abcdefgh")]
    query = b"?token=t&email=ann@example.com&page=1"
    snap = ("api-gateway", 10.5, 10.25, 20, 200, "id-1", "GET", "/a", query, "127.0.0.1",
            headers, 5, "r", "up", 0.125, 52, "bob@example.org", None)  # fmt: skip
    ev = orjson.loads(Pipeline().access_record(snap, 1700000000.0).json)
    assert ev["path"] == "/a?token=[REDACTED]&email=a***@example.com&page=1"
    assert ev["user_agent"] == "curl Bearer abcd****" and ev["user"] == "b***@example.org"
    assert ev["duration_ms"] == 250.0 and ev["upstream_duration_ms"] == 125.0 and ev["request_size"] == 5
    assert ev["timestamp"] == "2023-11-14T22:13:30.500Z"
    for k in ("path", "user_agent", "user", "correlation_id"):
        assert redact({k: ev[k]}) == {k: ev[k]}  # nothing the full walk would still mask
