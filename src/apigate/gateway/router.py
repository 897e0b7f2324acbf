"""The compiled route table.

Paths are exact (`/api/users`), have `{param}` segments (`/api/users/{id}`), or end in
`/*` (`/api/*`, which also matches `/api` itself). Among the routes whose path matches
and that accept the method, the most specific wins: more literal segments first, then a
route without a trailing wildcard, then more segments, then a longer literal prefix.
When paths match but no route takes the method, the answer is 405 with `Allow`.

Exact paths are one dict lookup; only pattern routes pay for a regex, tried in order of
specificity, so the first hit is the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from apigate.config.schema import RouteConfig


class Route:
    """One compiled route: what matching and path rewriting need. What runs for it (its
    filter chain and upstream pool) is in `App`'s table, by `index`, so that the route
    (which every filter may look at) depends on nothing above it."""

    def __init__(
        self,
        *,
        config: RouteConfig,
        id: str,
        upstream_id: str,
        methods: frozenset[str],
        pattern: re.Pattern[str] | None,  # None for an exact path
        prefix: str,  # the literal part before '/*' (or the whole exact path)
        wildcard: bool,
        specificity: tuple[int, int, int, int],
        index: int,
        rewrite: str | None,
        strip_prefix: bool,
        passthrough: bool,  # the upstream gets the request's own path (no rewrite, no strip)
    ) -> None:
        self.config = config
        self.id = id
        self.upstream_id = upstream_id
        self.methods = methods
        self.pattern = pattern
        self.prefix = prefix
        self.wildcard = wildcard
        self.specificity = specificity
        self.index = index
        self.rewrite = rewrite
        self.strip_prefix = strip_prefix
        self.passthrough = passthrough

    def upstream_path(self, path: str, params: dict[str, str]) -> str:
        """The path sent upstream (before the upstream's base path is prepended)."""
        if self.rewrite is not None:
            out = self.rewrite
            for k, v in params.items():
                out = out.replace("{" + k + "}", v)
            rest = params.get("*", "")
            return out.replace("{*}", rest) or "/"
        if self.strip_prefix:
            if self.wildcard:
                rest = params.get("*", "")
                return "/" + rest
            return "/"
        return path


Match = tuple[Route, dict[str, str]]  # a plain tuple: built once per request
_NO_PARAMS: Final[dict[str, str]] = {}  # shared by every exact match; never mutated


@dataclass(frozen=True)
class NoMatch:
    """404 when `allow` is empty, else 405 with these methods; or, with `error`, the
    request is refused before routing (that error code, with `message`)."""

    allow: tuple[str, ...]
    error: str | None = None
    message: str | None = None


_NO_ROUTE: Final = NoMatch(())


def _compile(cfg: RouteConfig, index: int) -> Route:
    path = cfg.path
    wildcard = path == "/*" or path.endswith("/*")
    base = path[:-2] if wildcard else path
    segments = [s for s in base.split("/") if s]
    literal = 0
    regex = ""
    prefix_parts: list[str] = []
    in_prefix = True
    for seg in segments:
        if seg.startswith("{"):
            regex += f"/(?P<{seg[1:-1]}>[^/]+)"
            in_prefix = False
        else:
            literal += 1
            regex += "/" + re.escape(seg)
            if in_prefix:
                prefix_parts.append(seg)
    has_params = any(s.startswith("{") for s in segments)
    if wildcard:
        regex += "(?:/(?P<_rest>.*))?"
    pattern = re.compile("^" + regex + "$") if (wildcard or has_params) else None
    prefix = "/" + "/".join(prefix_parts) if prefix_parts else ""
    specificity = (literal, 0 if wildcard else 1, len(segments), len(prefix))
    return Route(
        config=cfg,
        id=cfg.id,
        upstream_id=cfg.upstream_id,
        # HEAD is GET without the body (RFC 9110 §9.3.2): a GET route serves both.
        methods=frozenset([*cfg.methods, "HEAD"] if "GET" in cfg.methods else cfg.methods),
        pattern=pattern,
        prefix=prefix if (wildcard or has_params) else path,
        wildcard=wildcard,
        specificity=specificity,
        index=index,
        rewrite=cfg.rewrite,
        strip_prefix=cfg.strip_prefix,
        passthrough=cfg.rewrite is None and not cfg.strip_prefix,
    )


class Router:
    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes = [_compile(r, i) for i, r in enumerate(routes)]
        self.exact: dict[str, list[Route]] = {}
        patterns: list[Route] = []
        for route in self.routes:
            if route.pattern is None:
                self.exact.setdefault(route.prefix, []).append(route)
            else:
                patterns.append(route)
        # Most specific first; config order breaks ties so the table is deterministic.
        self.patterns = sorted(patterns, key=lambda r: (tuple(-x for x in r.specificity), r.index))

    def match(self, method: str, path: str) -> Match | NoMatch:
        allow: set[str] = set()
        exact = self.exact.get(path)
        if exact is not None:
            for route in exact:
                if method in route.methods:
                    return route, _NO_PARAMS
                allow |= route.methods
        for route in self.patterns:
            assert route.pattern is not None
            m = route.pattern.match(path)
            if m is None:
                continue
            if method not in route.methods:
                allow |= route.methods
                continue
            params = {k: v for k, v in m.groupdict().items() if v is not None}
            if "_rest" in params:
                params["*"] = params.pop("_rest")
            return route, params
        if not allow:
            return _NO_ROUTE
        return NoMatch(tuple(sorted(allow)))
