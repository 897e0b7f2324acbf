"""Request targets are normalised before routing (RFC 3986 §6, RFC 9112 §3.2)."""

from __future__ import annotations

import pytest

from apigate.gateway.paths import split_target


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/api/users", "/api/users", b""),
        (b"/api/users?x=1&y=%20", "/api/users", b"?x=1&y=%20"),
        (b"/api/./users", "/api/users", b""),
        (b"/api/admin/../users", "/api/users", b""),
        (b"/api/../../etc/passwd", "/etc/passwd", b""),
        (b"/api//users", "/api/users", b""),
        (b"/api/%75sers", "/api/users", b""),  # unreserved: decoded
        (b"/api/%2e%2e/admin", "/admin", b""),  # encoded dot segments cannot sneak past
        (b"/api/a%2Fb", "/api/a%2Fb", b""),  # %2F stays encoded: the shape never changes
        (b"/api/a%2fb", "/api/a%2Fb", b""),
        (b"/api/users/", "/api/users/", b""),
        (b"http://example.com/api/users?q", "/api/users", b"?q"),
        (b"http://example.com", "/", b""),
    ],
)
def test_split_and_normalise(target: bytes, path: str, query: bytes) -> None:
    assert split_target(target) == (path, query)


@pytest.mark.parametrize("target", [b"*", b"example.com:443", b"/a%00b"])
def test_targets_that_cannot_be_routed(target: bytes) -> None:
    assert split_target(target) is None
