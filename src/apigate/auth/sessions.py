"""Opaque session tokens, looked up in memory or in Redis.

A session is a random token (256 bits, `secrets.token_urlsafe(32)`) naming a JSON object
of claims (`sub`, `iat`, `exp`, anything else given at creation). In Redis it is the key
`session:<token>` with the session's TTL, so Redis forgets it when it ends and every
gateway instance sees the same sessions; `apigate session create|revoke` write there.
The in-memory store lives inside one gateway process (for tests and embedding): another
process cannot reach it, so the CLI refuses to work without Redis.

Redis lookups happen only on a claims-cache miss, and all misses of one event-loop turn
go to Redis as one MGET (DESIGN.md: one pipelined round trip per turn; on a Cluster, one
GET per token in the client's per-node pipelines); concurrent requests with the same new
token share one lookup. Redis is reached through the shared client (apigate/redis/: one
server, Sentinel or Cluster, deadlines, circuit breaker). Redis down, slower than
`timeout_ms` or behind an open breaker makes those requests fail with
`store_unavailable` (503), never hang.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable
from functools import partial
from typing import Any, Protocol

import orjson

from apigate.auth import reasons
from apigate.auth.reasons import AuthFailure
from apigate.config.schema import Config
from apigate.redis.client import ClientEvents, RedisClient, StoreUnavailable
from apigate.redis.endpoint import RedisTarget, session_target
from apigate.redis.resp import pack

KEY_PREFIX = "session:"
TOKEN_BYTES = 32  # of randomness: 256 bits, 43 URL-safe characters

Claims = dict[str, Any]
Lookup = Claims | None | Awaitable[Claims | None]


def new_token() -> str:
    """A new session token. Never one starting with '-' (one in 64 would): an operator pastes
    tokens into `apigate session revoke TOKEN`, where it would read as an option."""
    while (token := secrets.token_urlsafe(TOKEN_BYTES)).startswith("-"):
        pass
    return token


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
    def start(self) -> None:
        """Open connections before traffic (in the background)."""
        ...

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

    def start(self) -> None:
        return None

    async def close(self) -> None:
        self._sessions.clear()


_UNAVAILABLE = object()  # a lookup result: the store could not answer

EVENTS = ClientEvents.for_store(
    "auth", "session", "Session store", "session_store_unavailable", "Session store unavailable"
)


class RedisSessionStore:
    """Sessions in Redis through the shared client, batched per event-loop turn."""

    def __init__(
        self, target: RedisTarget | str, timeout: float, events: ClientEvents | None = EVENTS
    ) -> None:
        """`events=None`: no events (the `apigate session` commands print on stdout)."""
        if not isinstance(target, RedisTarget):
            target = RedisTarget(target)
        self.timeout = timeout
        self.client = RedisClient(target, timeout, events)
        self._pending: dict[str, asyncio.Future[object]] = {}

    def lookup(self, token: str) -> Lookup:
        if not self.client.available:
            return _unavailable()
        fut = self._pending.get(token)
        if fut is None:
            if not self._pending:
                self.client.at_flush(self._flush)
            fut = self._pending[token] = self.client.loop.create_future()
        return self._wait(fut)

    async def _wait(self, fut: asyncio.Future[object]) -> Claims | None:
        # shield: a cancelled request must not cancel the lookup other requests share.
        result = await asyncio.shield(fut)
        if result is _UNAVAILABLE:
            raise AuthFailure(reasons.STORE_UNAVAILABLE)
        return result  # type: ignore[return-value]

    def _flush(self) -> None:
        """The turn's tokens: one MGET, or on a Cluster (keys in different slots) one GET each."""
        batch, self._pending = self._pending, {}
        if self.client.cluster is None:
            tokens = list(batch)
            command = pack(b"MGET", *((KEY_PREFIX + t).encode() for t in tokens))
            self.client.submit(command, partial(self._answer_all, tokens, batch))
            return
        for token, fut in batch.items():
            self.client.submit(pack(b"GET", (KEY_PREFIX + token).encode()), partial(self._answer, fut))

    def _answer_all(self, tokens: list[str], batch: dict[str, asyncio.Future[object]], reply: object) -> None:
        values = reply if isinstance(reply, list) and len(reply) == len(tokens) else [reply] * len(tokens)
        for token, value in zip(tokens, values, strict=True):
            self._answer(batch[token], value)

    def _answer(self, fut: asyncio.Future[object], reply: object) -> None:
        result: object
        if reply is None or isinstance(reply, bytes):
            result = parse_claims(reply, time.time())
        else:  # any failure of the store is the same answer: unavailable
            if not isinstance(reply, StoreUnavailable):  # (the client logs its own failures)
                self.client.log_error("reply", str(reply))
            result = _UNAVAILABLE
        if not fut.done():
            fut.set_result(result)

    async def create(self, token: str, claims: Claims, ttl: float) -> None:
        key, ttl_ms = (KEY_PREFIX + token).encode(), b"%d" % max(1, int(ttl * 1000))
        await self.client.call(pack(b"SET", key, orjson.dumps(claims), b"PX", ttl_ms))

    async def revoke(self, token: str) -> bool:
        return bool(await self.client.call(pack(b"DEL", (KEY_PREFIX + token).encode())))

    def start(self) -> None:
        self.client.start()

    async def close(self) -> None:
        await self.client.close()


async def _unavailable() -> Claims | None:
    raise AuthFailure(reasons.STORE_UNAVAILABLE)


def open_session_store(cfg: Config) -> SessionStore:
    target = session_target(cfg)
    if target is None:
        return MemorySessionStore()
    timeout = (cfg.auth.session_store.timeout_ms if cfg.auth else 100) / 1000
    return RedisSessionStore(target, timeout)
