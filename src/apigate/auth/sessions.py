"""Opaque session tokens, looked up in memory or in Redis.

A session is a random token (256 bits, `secrets.token_urlsafe(32)`) naming a JSON object
of claims (`sub`, `iat`, `exp`, anything else given at creation). In Redis it is the key
`session:<token>` with the session's TTL, so Redis forgets it when it ends and every
gateway instance sees the same sessions; `apigate session create|revoke` write there.
The in-memory store lives inside one gateway process (for tests and embedding): another
process cannot reach it, so the CLI refuses to work without Redis.

Redis lookups happen only on a claims-cache miss, and all misses of one event-loop turn
go to Redis as one MGET (DESIGN.md: one pipelined round trip per turn); concurrent
requests with the same new token share one lookup. Redis down or slower than
`timeout_ms` makes those requests fail with `store_unavailable` (503), never hang.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import orjson

from apigate.auth import reasons
from apigate.auth.reasons import AuthFailure
from apigate.config.schema import Config
from apigate.logs import events

KEY_PREFIX = "session:"
TOKEN_BYTES = 32  # of randomness: 256 bits, 43 URL-safe characters
STORE_ERROR_LOG_INTERVAL_S = 10.0  # at most one store_unavailable event per interval

Claims = dict[str, Any]
Lookup = Claims | None | Awaitable[Claims | None]


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def session_claims(sub: str, ttl: float, extra: Claims | None = None, now: float | None = None) -> Claims:
    issued = int(time.time() if now is None else now)
    return {"sub": sub, "iat": issued, "exp": issued + int(ttl), **(extra or {})}


def parse_claims(raw: bytes | str | None, now: float) -> Claims | None:
    """Stored JSON -> claims; None for a missing, broken or already expired session."""
    if raw is None:
        return None
    try:
        claims = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    if isinstance(exp, int | float) and exp <= now:
        return None
    return claims


class SessionStore(Protocol):
    def lookup(self, token: str) -> Lookup:
        """Claims (synchronously, when the store can), or an awaitable of them.
        None: no such session. An awaitable may raise AuthFailure(store_unavailable)."""
        ...

    async def create(self, token: str, claims: Claims, ttl: float) -> None: ...
    async def revoke(self, token: str) -> bool: ...
    async def close(self) -> None: ...


class MemorySessionStore:
    """Sessions in this process's memory: token -> stored JSON."""

    def __init__(self) -> None:
        self._sessions: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, token: str) -> Lookup:
        raw = self._sessions.get(token)
        claims = parse_claims(raw, time.time())
        if claims is None and raw is not None:
            del self._sessions[token]
        return claims

    async def create(self, token: str, claims: Claims, ttl: float) -> None:
        now = time.time()
        for stale in [t for t, raw in self._sessions.items() if parse_claims(raw, now) is None]:
            del self._sessions[stale]
        self._sessions[token] = orjson.dumps({**claims, "exp": claims.get("exp", now + ttl)})

    async def revoke(self, token: str) -> bool:
        return self._sessions.pop(token, None) is not None

    async def close(self) -> None:
        self._sessions.clear()


_UNAVAILABLE = object()  # a lookup result: the store could not answer


class RedisSessionStore:
    """Sessions in Redis (redis-py asyncio with hiredis), batched per event-loop turn."""

    def __init__(self, url: str, timeout: float) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.timeout = timeout
        # One retry, at once, for a pooled connection Redis closed; `timeout` bounds it all.
        self.redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=32,
            retry=Retry(NoBackoff(), 1),
        )
        self._pending: dict[str, asyncio.Future[object]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_error_log = -STORE_ERROR_LOG_INTERVAL_S

    def lookup(self, token: str) -> Lookup:
        fut = self._pending.get(token)
        if fut is None:
            loop = asyncio.get_running_loop()
            if not self._pending:
                loop.call_soon(self._flush)
            fut = self._pending[token] = loop.create_future()
        return self._wait(fut)

    async def _wait(self, fut: asyncio.Future[object]) -> Claims | None:
        # shield: a cancelled request must not cancel the lookup other requests share.
        result = await asyncio.shield(fut)
        if result is _UNAVAILABLE:
            raise AuthFailure(reasons.STORE_UNAVAILABLE)
        return result  # type: ignore[return-value]

    def _flush(self) -> None:
        batch, self._pending = self._pending, {}
        task = asyncio.get_running_loop().create_task(self._fetch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, batch: dict[str, asyncio.Future[object]]) -> None:
        tokens = list(batch)
        results: list[object]
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self.redis.mget([KEY_PREFIX + t for t in tokens])
        except Exception as e:  # any failure of the store is the same answer: unavailable
            self._log_error(e)
            results = [_UNAVAILABLE] * len(tokens)
        else:
            now = time.time()
            results = [parse_claims(r, now) for r in raw]
        for token, result in zip(tokens, results, strict=True):
            fut = batch[token]
            if not fut.done():
                fut.set_result(result)

    def _log_error(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= STORE_ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            events.emit(
                "ERROR",
                "auth",
                "session_store_unavailable",
                "Session store unavailable",
                error=type(error).__name__,
                detail=str(error)[:200],
            )

    async def create(self, token: str, claims: Claims, ttl: float) -> None:
        await self.redis.set(KEY_PREFIX + token, orjson.dumps(claims), px=max(1, int(ttl * 1000)))

    async def revoke(self, token: str) -> bool:
        return bool(await self.redis.delete(KEY_PREFIX + token))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.redis.aclose()


def session_redis_url(cfg: Config) -> str | None:
    """`auth.session_store.redis_url`, else `rate_limiting.redis_url`, else None (memory)."""
    if cfg.auth is not None and cfg.auth.session_store.redis_url:
        return cfg.auth.session_store.redis_url
    if cfg.rate_limiting is not None:
        return cfg.rate_limiting.redis_url
    return None


def open_session_store(cfg: Config) -> SessionStore:
    url = session_redis_url(cfg)
    if url is None:
        return MemorySessionStore()
    timeout = (cfg.auth.session_store.timeout_ms if cfg.auth else 100) / 1000
    return RedisSessionStore(url, timeout)
