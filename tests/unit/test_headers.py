"""Header rules shared by both sides of the proxy."""

from __future__ import annotations

import pytest

from apigate.gateway.correlation import new_request_id
from apigate.http.headers import connection_tokens, is_sane_request_id, status_line


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
