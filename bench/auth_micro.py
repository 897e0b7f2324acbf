#!/usr/bin/env python3
"""Micro-benchmark: the cost of the auth filter's on_request on the request path.

Measures, in µs per request (median of ROUNDS timing runs of N calls each):

- `cached`   an auth_required route, a valid HS256 JWT already in the claims cache:
             header scan, client-header strip check, cache hit, scope check, X-User-ID added
- `open`     a route without auth_required: only the scan that strips client X-User-ID
- `verify`   the same token with the cache disabled (PyJWT decode + claims every time)

The header list is reset before each call (the filter appends X-User-ID); that reset is
timed alone and subtracted. Run: `.venv/bin/python bench/auth_micro.py [N]`.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from apigate.auth.filter import AuthFilter
from apigate.auth.jwt import mint
from apigate.config.schema import Config
from apigate.gateway.filters import RequestContext
from apigate.gateway.router import Router

ROUNDS = 7
SECRET = "bench-secret-0123456789abcdef0123456789"


class Cycle:
    method = "GET"
    client = "127.0.0.1"
    headers: list[tuple[bytes, bytes]]


def setup(cache: bool) -> tuple[AuthFilter, Router, list[tuple[bytes, bytes]]]:
    cfg = Config.model_validate(
        {
            "auth": {
                "jwt_secret": SECRET,
                "jwt_issuer": "https://idp.example",
                "jwt_audience": "api",
                "cache": {"enabled": cache},
            },
            "upstreams": [{"id": "u", "base_url": "http://127.0.0.1:1"}],
            "routes": [
                {"id": "users", "path": "/api/users", "upstream_id": "u", "auth_required": True},
                {"id": "open", "path": "/api/open", "upstream_id": "u"},
            ],
        }
    )
    assert cfg.auth is not None
    token = mint(cfg.auth, "alice", 3600, {"scope": "read write"})
    headers = [
        (b"host", b"api.example"),
        (b"user-agent", b"wrk"),
        (b"accept", b"application/json"),
        (b"authorization", b"Bearer " + token.encode()),
        (b"accept-encoding", b"gzip"),
    ]
    return AuthFilter(cfg), Router(cfg.routes), headers


def measure(n: int, filt: AuthFilter | None, ctx: RequestContext, base: list[Any]) -> float:
    cycle = ctx.cycle
    on_request = filt.on_request if filt is not None else None
    best: list[float] = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        if on_request is None:
            for _ in range(n):
                cycle.headers = base.copy()
        else:
            for _ in range(n):
                cycle.headers = base.copy()
                if on_request(ctx) is not None:
                    raise SystemExit("the filter refused the request")
        best.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(best)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    results = {}
    for label, path, cache in (("cached", "/api/users", True), ("open", "/api/open", True)):
        filt, router, headers = setup(cache)
        cycle = Cycle()
        cycle.headers = list(headers)
        ctx = RequestContext(cycle, path, b"", time.monotonic())  # type: ignore[arg-type]
        match = router.match("GET", path)
        assert isinstance(match, tuple)
        ctx.route = match[0]
        filt.on_request(ctx)  # warm the cache
        reset = measure(n, None, ctx, headers)
        results[label] = measure(n, filt, ctx, headers) - reset
    filt, router, headers = setup(False)
    cycle = Cycle()
    ctx = RequestContext(cycle, "/api/users", b"", time.monotonic())  # type: ignore[arg-type]
    match = router.match("GET", "/api/users")
    assert isinstance(match, tuple)
    ctx.route = match[0]
    results["verify"] = measure(max(n // 50, 1000), filt, ctx, headers) - reset
    for label, us in results.items():
        print(f"{label:7s} {us:7.2f} µs per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
