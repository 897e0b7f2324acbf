"""Verified claims, cached by token, so a known token costs one dict lookup.

An entry lives `ttl_secs`, but never past the token's own `exp`: the cache may only save
work, never extend a token's life. Sessions are cached the same way, which is why a
revoked session keeps working for up to `ttl_secs` (docs/CONFIGURATION.md says so).

Deadlines are on the request clock (CLOCK_MONOTONIC, the request's `ctx.start`), so a hit
costs no clock read; `exp` is converted once, when the entry is made. `max_capacity`
bounds memory: when full, the oldest entry goes (insertion order, which for one ttl is
also expiry order). Only verified tokens get in, so a client cannot fill the cache with
garbage. Everything here is synchronous: a hit never waits and never makes a task.
"""

from __future__ import annotations

import time
from typing import Any

from apigate.auth import reasons
from apigate.auth.reasons import AuthFailure
from apigate.http.headers import X_USER_ID, Headers


class Verified:
    """What a verified token gives the request: identity, claims, upstream headers, scopes."""

    __slots__ = ("claims", "deadline", "headers", "scopes", "user")

    def __init__(
        self,
        user: str | None,
        claims: dict[str, Any],
        headers: Headers,
        scopes: frozenset[str],
        deadline: float,
    ) -> None:
        self.user = user
        self.claims = claims
        self.headers = headers  # appended to the upstream request
        self.scopes = scopes
        self.deadline = deadline  # request-clock time after which the entry is stale


def verified(
    claims: dict[str, Any], claim_headers: dict[bytes, str], now: float, ttl: float, wall: float | None = None
) -> Verified:
    """A Verified for claims that passed verification; `now` is request-clock time, `wall` epoch time.

    `sub` must be a non-empty string fit for a header (no control characters) or absent; a claim
    header whose value is not fit for a header is left out rather than sent broken.
    """
    sub = claims.get("sub")
    headers: Headers = []
    if sub is not None:
        # An empty sub is no identity: an upstream must never get an empty X-User-ID.
        if not isinstance(sub, str) or not sub or not _header_safe(sub):
            raise AuthFailure(reasons.MALFORMED)
        headers.append((X_USER_ID, sub.encode()))
    for name, claim in claim_headers.items():
        value = _header_value(claims.get(claim))
        if value is not None:
            headers.append((name, value))
    lifetime = ttl
    exp = claims.get("exp")
    if isinstance(exp, int | float):
        lifetime = min(ttl, float(exp) - (time.time() if wall is None else wall))
    return Verified(sub, claims, headers, scopes_of(claims), now + lifetime)


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """OAuth scopes: `scope` as a space-separated string (RFC 8693 §4.2), or `scp` as a list."""
    out: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        out.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        out.update(scp.split())
    elif isinstance(scp, list):
        out.update(s for s in scp if isinstance(s, str))
    return frozenset(out)


def _header_safe(text: str) -> bool:
    return text.isprintable() and len(text) <= 1024


def _header_value(value: object) -> bytes | None:
    if value is None or isinstance(value, dict):
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list):
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value):
            return None
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    return text.encode() if _header_safe(text) else None


class ClaimsCache:
    """token -> Verified, bounded in size and in time."""

    def __init__(self, capacity: int, ttl: float, enabled: bool = True) -> None:
        self.capacity = capacity if enabled else 0
        self.ttl = ttl
        self.entries: dict[bytes, Verified] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"<ClaimsCache {len(self.entries)}/{self.capacity} ttl={self.ttl:g}s>"

    def get(self, token: bytes, now: float) -> Verified | None:
        entry = self.entries.get(token)
        if entry is None:
            return None
        if entry.deadline > now:
            return entry
        del self.entries[token]
        return None

    def put(self, token: bytes, entry: Verified, now: float) -> None:
        if self.capacity == 0 or entry.deadline <= now:
            return
        entries = self.entries
        if token not in entries and len(entries) >= self.capacity:
            del entries[next(iter(entries))]
        entries[token] = entry

    def discard(self, token: bytes) -> None:
        self.entries.pop(token, None)
