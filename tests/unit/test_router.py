"""The route table: exact, {param} and /* routes, specificity, 404 and 405."""

from __future__ import annotations

import pytest

from apigate.config.schema import RouteConfig
from apigate.gateway.router import NoMatch, Router


def route(rid: str, path: str, methods: list[str] | None = None, **kw: object) -> RouteConfig:
    data: dict[str, object] = {"id": rid, "path": path, "upstream_id": "u", **kw}
    if methods is not None:
        data["methods"] = methods
    return RouteConfig.model_validate(data)


TABLE = Router(
    [
        route("users-list", "/api/users", ["GET"]),
        route("users-create", "/api/users", ["POST"]),
        route("user-get", "/api/users/{id}", ["GET", "DELETE"]),
        route("user-me", "/api/users/me", ["GET"]),
        route("user-any", "/api/users/*", ["GET", "PUT"]),
        route("api", "/api/*"),
        route("orders", "/api/{kind}/list", ["GET"]),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "expected", "params"),
    [
        ("GET", "/api/users", "users-list", {}),
        ("POST", "/api/users", "users-create", {}),
        ("HEAD", "/api/users", "users-list", {}),  # a GET route serves HEAD
        ("GET", "/api/users/me", "user-me", {}),  # exact beats {param}
        ("DELETE", "/api/users/me", "user-get", {"id": "me"}),  # exact route lacks DELETE
        ("GET", "/api/users/42", "user-get", {"id": "42"}),
        ("GET", "/api/users/42/orders", "user-any", {"*": "42/orders"}),  # deeper: prefix
        ("PUT", "/api/users/42", "user-any", {"*": "42"}),  # {param} lacks PUT
        ("GET", "/api/things/list", "orders", {"kind": "things"}),  # {param} beats /api/*
        ("GET", "/api", "api", {}),  # a prefix route matches its own root
        ("PATCH", "/api/anything/at/all", "api", {"*": "anything/at/all"}),
    ],
)
def test_most_specific_route_that_takes_the_method_wins(
    method: str, path: str, expected: str, params: dict[str, str]
) -> None:
    match = TABLE.match(method, path)
    assert isinstance(match, tuple), match
    assert match[0].id == expected
    assert match[1] == params


def test_no_route_is_404_and_wrong_method_is_405_with_allow() -> None:
    assert TABLE.match("GET", "/nothing") == NoMatch(())
    narrow = Router([route("a", "/a", ["GET"]), route("b", "/a", ["POST"])])
    assert narrow.match("DELETE", "/a") == NoMatch(("GET", "HEAD", "POST"))


def test_prefix_does_not_match_a_longer_segment() -> None:
    r = Router([route("api", "/api/*")])
    assert r.match("GET", "/apiary") == NoMatch(())


@pytest.mark.parametrize(
    ("cfg", "path", "upstream"),
    [
        (route("p", "/svc/*", strip_prefix=True), "/svc/a/b", "/a/b"),
        (route("p", "/svc/*", strip_prefix=True), "/svc", "/"),
        (route("p", "/svc/exact", strip_prefix=True), "/svc/exact", "/"),
        (route("p", "/users/{id}", rewrite="/v2/people/{id}"), "/users/7", "/v2/people/7"),
        (route("p", "/old/*", rewrite="/new/{*}"), "/old/x/y", "/new/x/y"),
        (route("p", "/keep/*"), "/keep/x", "/keep/x"),
    ],
)
def test_strip_prefix_and_rewrite(cfg: RouteConfig, path: str, upstream: str) -> None:
    match = Router([cfg]).match("GET", path)
    assert isinstance(match, tuple)
    assert match[0].upstream_path(path, match[1]) == upstream
