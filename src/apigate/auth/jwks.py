"""JWKS: an identity provider's verification keys, fetched at start and kept fresh.

The key set is fetched when the filter starts, then every `jwks_refresh_secs` in the
background (retrying failures with backoff, keeping the last good set meanwhile). A
token whose `kid` is not in the set triggers a refetch, for a key rotated in since the
last fetch, but at most once per JWKS_MIN_REFETCH_S across all fetches: otherwise any
client could make the gateway hammer the provider by sending made-up kids. Concurrent
needs share one fetch in flight.

Only keys fit for the configured algorithm are kept (keys.check_key): a JWK marked for
another `alg`, for encryption (`use: enc`), of the wrong type or curve, or carrying
private material is skipped. `kid` is only a dictionary key here, never a path or URL.
A token without `kid` is accepted only when the set holds exactly one usable key.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import orjson

from apigate.auth.httpget import FetchError, http_get
from apigate.config.jwt_keys import PublicKey, check_key
from apigate.logs import events

JWKS_MIN_REFETCH_S = 30.0  # an unknown kid refetches at most this often
FETCH_TIMEOUT_S = 5.0
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0

Fetch = Callable[[str], Awaitable[bytes]]


def _default_fetch(url: str) -> Awaitable[bytes]:
    return http_get(url, FETCH_TIMEOUT_S)


def parse_jwks(body: bytes, algorithm: str) -> tuple[dict[str, PublicKey], PublicKey | None, int]:
    """(keys by kid, the key for tokens without kid, number of JWKs skipped) or ValueError."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWK set (no 'keys' list)")
    keys: dict[str, PublicKey] = {}
    usable: list[PublicKey] = []
    skipped = 0
    for jwk in doc["keys"]:
        key = _usable_key(jwk, algorithm)
        if key is None:
            skipped += 1
            continue
        usable.append(key)
        kid = jwk.get("kid")
        if isinstance(kid, str):
            keys.setdefault(kid, key)
    if not usable:
        raise ValueError(f"no key usable with {algorithm} among {len(doc['keys'])}")
    return keys, usable[0] if len(usable) == 1 else None, skipped


def _usable_key(jwk: Any, algorithm: str) -> PublicKey | None:
    if not isinstance(jwk, dict) or "d" in jwk:
        return None
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", algorithm) != algorithm:
        return None
    try:
        return check_key(jwt.PyJWK(jwk, algorithm).key, algorithm)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None


class JwksKeySet:
    """The current key set of one JWKS URL, for one algorithm."""

    def __init__(
        self,
        url: str,
        algorithm: str,
        refresh_secs: float,
        fetch: Fetch = _default_fetch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.algorithm = algorithm
        self.refresh_secs = refresh_secs
        self._fetch = fetch
        self._clock = clock
        self._keys: dict[str, PublicKey] = {}
        self._only: PublicKey | None = None
        self.loaded = False  # a key set was fetched at least once
        self.fetches = 0
        self._last_fetch = -math.inf
        self._inflight: asyncio.Task[bool] | None = None
        self._runner: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<JwksKeySet {self.url} {len(self._keys)} keys, {self.fetches} fetches>"

    def start(self) -> None:
        """Fetch now and keep refreshing in the background (needs a running loop)."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        for task in (self._runner, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def key_for(self, kid: str | None) -> PublicKey | None:
        return self._only if kid is None else self._keys.get(kid)

    async def key_after_refetch(self, kid: str | None) -> PublicKey | None:
        """The key for a kid the set lacks, after a refetch if one is allowed now."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
        elif self._clock() - self._last_fetch >= JWKS_MIN_REFETCH_S:
            await self.refresh()
        return self.key_for(kid)

    def refresh(self) -> Awaitable[bool]:
        """Fetch the set (or join the fetch in flight); True when it was replaced."""
        if self._inflight is None:
            task = asyncio.get_running_loop().create_task(self._refresh_once())
            self._inflight = task
            task.add_done_callback(self._fetched)
        return asyncio.shield(self._inflight)

    def _fetched(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh_once(self) -> bool:
        self._last_fetch = self._clock()
        self.fetches += 1
        try:
            keys, only, skipped = parse_jwks(await self._fetch(self.url), self.algorithm)
        except (FetchError, ValueError) as e:
            events.emit("ERROR", "auth", "jwks_fetch_failed", "JWKS fetch failed", url=self.url, error=str(e))
            return False
        self._keys, self._only, self.loaded = keys, only, True
        events.emit(
            "INFO", "auth", "jwks_loaded", "JWKS loaded", url=self.url, keys=len(keys), skipped=skipped
        )
        return True

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            if await self.refresh():
                delay = RETRY_FIRST_S
                await asyncio.sleep(self.refresh_secs)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
