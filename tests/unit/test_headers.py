"""Header rules shared by both sides of the proxy."""

from __future__ import annotations

import pytest

from apigate.gateway.correlation import new_request_id
from apigate.http.headers import (
    connection_named,
    connection_tokens,
    is_sane_request_id,
    is_valid_host,
    status_line,
)


@pytest.mark.parametrize(
    ("value", "sane"),
    [
        (b"abc-123", True),
        (b"a" * 128, True),
        (b"a" * 129, False),
        (b"", False),
        (b"has space", False),
        (b"tab\there", False),
        ("caf\u00e9".encode(), False),
        (b"line\r\nbreak", False),
    ],
)
def test_client_request_ids_are_kept_only_when_sane(value: bytes, sane: bool) -> None:
    assert is_sane_request_id(value) is sane


def test_generated_request_ids_are_uuid_shaped_and_unique() -> None:
    # 10,000: past two of the 4,096-id blocks the generator renews its prefix at.
    ids = [new_request_id() for _ in range(10000)]
    assert len(set(ids)) == 10000
    for rid in list(ids)[:10]:
        parts = rid.split("-")
        assert [len(p) for p in parts] == [8, 4, 4, 4, 12]
        assert parts[2][0] == "4" and parts[3][0] in "89ab"
        int(rid.replace("-", ""), 16)


def test_connection_tokens() -> None:
    assert connection_tokens(b"Keep-Alive, X-Secret ,upgrade") == {b"keep-alive", b"x-secret", b"upgrade"}


def test_status_line() -> None:
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(599) == b"HTTP/1.1 599 Unknown\r\n"


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        (b"", True),  # RFC 9112 §3.2: a target without authority sends an empty Host
        (b"example.com", True),
        (b"example.com:8080", True),
        (b"example.com:", True),  # RFC 3986 §3.2.3: the port may be empty
        (b"127.0.0.1:65535", True),
        (b"[::1]", True),
        (b"[2001:db8::1]:443", True),
        (b"ex%41mple", True),
        (b"evil.example/x?y", False),
        (b"user@host", False),
        (b"a:b:c", False),
        (b"host:65536", False),
        (b"host:80x", False),
        (b":80", False),
        (b"[::1", False),
        (b"[]", False),
        (b"[::1]x", False),
        (b"ex%4", False),
        (b"ex%zz", False),
        (b"a b", False),
        (b"a\\b", False),
    ],
)
def test_host_values(host: bytes, valid: bool) -> None:
    assert is_valid_host(host) is valid


def test_connection_cannot_name_the_fields_the_gateway_vouches_for() -> None:
    named = connection_named(
        [b"close, X-User-ID, Host, x-forwarded-for", b"X-Forwarded-Host, X-Other, x-request-id"]
    )
    assert named == frozenset({b"x-other"})
