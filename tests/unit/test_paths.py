"""Request targets are normalised before routing (RFC 3986 §6, RFC 9112 §3.2)."""

from __future__ import annotations

import pytest

from apigate.gateway.paths import decoded_slashes, has_escaped_slash, split_target


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
    assert split_target(target) == (path, query, "%2F" in path)


@pytest.mark.parametrize("target", [b"*", b"example.com:443", b"/a%00b"])
def test_targets_that_cannot_be_routed(target: bytes) -> None:
    assert split_target(target) is None


@pytest.mark.parametrize(
    "target", [b"http://user@h/x", b"http:///x", b"https://h/x/../y?", b"http://h:99999/x"]
)
def test_an_absolute_form_authority_must_be_a_host(target: bytes) -> None:
    valid = target == b"https://h/x/../y?"
    assert (split_target(target) is not None) is valid


@pytest.mark.parametrize(
    ("path", "escaped", "decoded"),
    [
        ("/api/users", False, "/api/users"),
        ("/public/..%2Fapi/users", True, "/api/users"),
        ("/public/..%5Capi/users", True, "/api/users"),
        ("/public/..\\api/users", True, "/api/users"),
        ("/files/a%2Fb", True, "/files/a/b"),
        ("/files/%25", False, "/files/%25"),
        ("/public/..%252Fapi/users", True, "/api/users"),
        ("/public/..%252fapi/users", True, "/api/users"),
        ("/public/..;/api/users", True, "/api/users"),
        ("/public/.;x/api", True, "/public/api"),
        ("/api/users;v=1", False, "/api/users"),
    ],
)
def test_escaped_slashes_and_how_an_upstream_would_decode_them(
    path: str, escaped: bool, decoded: str
) -> None:
    assert has_escaped_slash(path) is escaped
    assert decoded_slashes(path) == decoded
    split = split_target(path.encode("latin-1"))
    assert split is not None
    assert split[2] is escaped  # answered once per target, in split_target
