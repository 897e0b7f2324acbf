"""The Redis limit store: one Lua script per check, every check of a loop turn in one
pipelined round trip, a hard deadline per request, and a circuit breaker.

Why it is built this way (DESIGN.md, "Redis"): one EVALSHA per request through redis-py
caps a worker near 10k checks/s on its own; pipelined, the same calls reach ~77k/s. So
`check()` only queues the call and returns a future; the first check of a loop turn
schedules `_flush` with `call_soon`, which runs after every request of the turn has been
read and writes all of them as one pipeline. For one Redis (redis://, rediss://,
unix://, or the master Sentinel names) the store speaks RESP itself on a single
connection (an asyncio Protocol feeding hiredis): batches are written synchronously, no
task per batch and none per check, and replies resolve the futures in order. For Redis
Cluster the batch goes through redis-py's cluster pipeline, which groups the commands by
node and sends one pipeline to each node concurrently.

The script (`SCRIPT`) is `algorithms.py` transcribed: it reads the time with `TIME`, so
instances whose clocks disagree still agree on windows and refills, and it sets a TTL on
every key it writes. It is called by EVALSHA; a NOSCRIPT reply (Redis restarted, SCRIPT
FLUSH, a failover) sends SCRIPT LOAD and the failed calls again, once.

Deadlines: each batch has a timer at `timeout_ms` from its flush; when it fires, the
checks still waiting fail with `StoreUnavailable("timeout")` and the connection is
dropped (replies arriving late would be out of step). A failed connect fails the batch
at once. So no request waits longer than timeout_ms on Redis.

Circuit breaker (states in `Breaker`): when round trips have failed without a success
in between for `OPEN_AFTER_S` (and at least `FAILURES_TO_OPEN` of them), it opens — a
stall shorter than that (a busy host, a slow command) costs only the requests it delays,
not a further probe interval of refusals. While open, `available` is False and the filter
answers without asking Redis (503 or the local limiter): no connect attempt per request
against a dead server. A probe (connect + PING) runs every `PROBE_INTERVAL_S`; its first
success closes the breaker, so limits are enforced through Redis again within ~0.5 s of
Redis returning.

Counters for metrics (exported by the telemetry package, which owns prometheus names):
- `backend_errors[reason]` -> rate_limit_backend_errors_total{reason}; reasons are
  `timeout`, `connection`, `script` (an error reply), `circuit_open` (checks answered
  without Redis because the breaker was open; counted by the filter).
- `latency_sum`, `latency_count`, `latency_buckets` (observations per bucket, upper
  bounds in `LATENCY_BUCKETS_S`, not cumulative; slower ones only in latency_count) ->
  rate_limit_backend_latency_seconds, one observation per round trip (flush to last reply).
- `round_trips`, `checks_sent`: checks per round trip = checks_sent / round_trips.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import hashlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from apigate.logs import events
from apigate.ratelimit.algorithms import Algorithm, Decision

log = logging.getLogger("apigate.ratelimit")

FAILURES_TO_OPEN = 3  # failed round trips in a row that open the breaker ...
OPEN_AFTER_S = 0.5  # ... once the first of them is this long ago
# Batches of checks awaiting replies on the connection; later checks wait and go together.
# 2, not 1: with one, the gateway idles while Redis is slow to wake (bench/README.md).
MAX_IN_FLIGHT = 2
PROBE_INTERVAL_S = 0.25  # while open: how often Redis is probed
ERROR_LOG_INTERVAL_S = 10.0  # at most one backend error event per interval
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# KEYS[1] the counter; ARGV: algorithm code (algorithms.Algorithm), limit, window_ms, and
# an optional fixed "now" in ms (tests replay the shared table of cases with it; the
# gateway always sends "" so that Redis TIME is used). Returns {allowed, remaining,
# reset_ms, retry_ms}. Each branch is the function of the same name in algorithms.py.
SCRIPT = """
-- Redis < 5 replicates scripts verbatim and refuses writes after TIME unless told to
-- replicate effects; Redis >= 5 does that anyway (and 7 keeps this call as a no-op).
if redis.replicate_commands then redis.replicate_commands() end

local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function cdiv(a, b) return -idiv(-a, b) end
local function num(x) return string.format('%.0f', x) end

local key = KEYS[1]
local alg, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now
if ARGV[4] ~= nil and ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + idiv(tonumber(t[2]), 1000)
end
local s = redis.call('HMGET', key, 'a', 'b', 'c')
local exists = s[1] ~= false and s[2] ~= false

if alg == 1 then
  local capacity = limit * window
  local level = capacity
  if exists then
    local elapsed = math.max(0, now - tonumber(s[2]))
    level = math.min(capacity, tonumber(s[1]) + elapsed * limit)
  end
  if level >= window then
    level = level - window
    local reset = cdiv(capacity - level, limit)
    redis.call('HSET', key, 'a', num(level), 'b', num(now))
    redis.call('PEXPIRE', key, reset)
    return {1, idiv(level, window), reset, 0}
  end
  return {0, 0, cdiv(capacity - level, limit), cdiv(window - level, limit)}
end

local index = idiv(now, window)
if alg == 2 then
  local count = 0
  if exists and tonumber(s[1]) == index then count = tonumber(s[2]) end
  local reset = (index + 1) * window - now
  if count < limit then
    count = count + 1
    redis.call('HSET', key, 'a', num(index), 'b', num(count))
    redis.call('PEXPIRE', key, reset)
    return {1, limit - count, reset, 0}
  end
  return {0, 0, reset, reset}
end

local elapsed = now - index * window
local current, previous = 0, 0
if exists then
  local w = tonumber(s[1])
  if w == index then
    current, previous = tonumber(s[2]), tonumber(s[3] or '0')
  elseif w == index - 1 then
    previous = tonumber(s[2])
  end
end
local budget = limit * window
local weighted = previous * (window - elapsed) + current * window
if weighted + window <= budget then
  current = current + 1
  weighted = weighted + window
  local ttl = 2 * window - elapsed
  redis.call('HSET', key, 'a', num(index), 'b', num(current), 'c', num(previous))
  redis.call('PEXPIRE', key, ttl)
  return {1, idiv(budget - weighted, window), ttl, 0}
end
local reset = window - elapsed
if current > 0 then reset = 2 * window - elapsed end
local retry
if current < limit then
  retry = (window - elapsed) - idiv((limit - current - 1) * window, previous)
else
  retry = (window - elapsed) + window - idiv((limit - 1) * window, current)
end
return {0, 0, reset, retry}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


class StoreUnavailable(Exception):
    """Redis could not answer in time; `reason` is a backend_errors label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------- RESP
def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


_EVALSHA_HEAD = b"*8\r\n" + bulk(b"EVALSHA") + bulk(SCRIPT_SHA.encode()) + bulk(b"1")
_SCRIPT_LOAD = pack(b"SCRIPT", b"LOAD", SCRIPT.encode())


def call_args(algorithm: Algorithm, limit: int, window: int, now: int | None = None) -> tuple[bytes, ...]:
    """ARGV of the script for one limit (`now`: tests only)."""
    return (b"%d" % algorithm, b"%d" % limit, b"%d" % window, b"" if now is None else b"%d" % now)


def packed_args(args: Sequence[bytes]) -> bytes:
    """The ARGV part of the EVALSHA command, packed once per configured limit."""
    return b"".join(bulk(a) for a in args)


def _decision(reply: object) -> Decision:
    if not isinstance(reply, list) or len(reply) != 4:
        raise StoreUnavailable("script")
    return reply[0] == 1, reply[1], reply[2], reply[3]


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")


class Breaker(enum.Enum):
    CLOSED = "closed"  # Redis is asked
    OPEN = "open"  # Redis is not asked; a probe runs every PROBE_INTERVAL_S


# ----------------------------------------------------------------------------- endpoints
class Endpoint:
    """Where the single connection goes: parsed once from redis_url (or asked of Sentinel)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items() if v}
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 6379
        self.path = unquote(parts.path) if parts.scheme == "unix" else ""
        self.username = unquote(parts.username) if parts.username else query.get("username")
        self.password = unquote(parts.password) if parts.password else query.get("password")
        db = query.get("db") or (parts.path.strip("/") if parts.scheme != "unix" else "")
        self.db = int(db) if db else 0
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "rediss":
            self.ssl = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
            if query.get("ssl_cert_reqs") == "none":
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self.sentinel: Any = None
        self.master_name = ""

    def handshake(self) -> list[bytes]:
        """AUTH and SELECT, sent before anything else on a new connection."""
        out = []
        if self.password is not None:
            if self.username:
                out.append(pack(b"AUTH", self.username.encode(), self.password.encode()))
            else:
                out.append(pack(b"AUTH", self.password.encode()))
        if self.db:
            out.append(pack(b"SELECT", b"%d" % self.db))
        return out

    async def open(self, protocol_factory: Callable[[], asyncio.Protocol]) -> asyncio.BaseTransport:
        loop = asyncio.get_running_loop()
        if self.scheme == "unix":
            transport, _ = await loop.create_unix_connection(protocol_factory, self.path)
            return transport
        host, port = self.host, self.port
        if self.sentinel is not None:
            host, port = await self.sentinel.discover_master(self.master_name)
        transport, _ = await loop.create_connection(
            protocol_factory, host, port, ssl=self.ssl, server_hostname=host if self.ssl else None
        )
        return transport


class _Batch:
    """Replies expected for one write, in order: one handler per reply."""

    __slots__ = ("counted", "handlers", "started", "timer")

    def __init__(self, handlers: deque[Callable[[object], None]], started: float, counted: bool) -> None:
        self.handlers = handlers
        self.started = started
        self.counted = counted  # a round trip of checks (not a handshake or a probe)
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    """One RESP connection: writes are pipelined, replies go to the batches in order."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.reader = hiredis.Reader()
        self.batches: deque[_Batch] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.in_flight = 0  # counted batches (of checks) written and not yet answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; they implement it)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        batches = self.batches
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not batches:  # a reply nobody waits for: out of step, start over
                self.abort("connection")
                return
            batch = batches[0]
            batch.handlers.popleft()(reply)
            if not batch.handlers:
                batches.popleft()
                if batch.timer is not None:
                    batch.timer.cancel()
                if batch.counted:
                    self.in_flight -= 1
                    self.store._round_trip_done(batch.started)
                    if self.store._pending:  # checks held while this batch was out
                        self.store._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.store._connection_lost(self, "connection")
        self._fail_all("connection")

    def _fail_all(self, reason: str) -> None:
        batches, self.batches = self.batches, deque()
        self.in_flight = 0
        for batch in batches:
            if batch.timer is not None:
                batch.timer.cancel()
            error = StoreUnavailable(reason)
            for handler in batch.handlers:
                handler(error)

    def abort(self, reason: str) -> None:
        """Drop the connection, failing every batch still waiting with `reason`."""
        self.lost = True
        self._fail_all(reason)
        if self.transport is not None:
            self.transport.abort()
        self.store._connection_lost(self, reason)

    def write(
        self, data: bytes, handlers: deque[Callable[[object], None]], deadline: float, counted: bool = True
    ) -> _Batch:
        assert self.transport is not None
        loop = self.store.loop
        batch = _Batch(handlers, loop.time(), counted)
        batch.timer = loop.call_at(deadline, self._expire, batch)
        self.batches.append(batch)
        if counted:
            self.in_flight += 1
        self.transport.write(data)
        return batch

    def _expire(self, batch: _Batch) -> None:
        if batch.handlers:
            self.abort("timeout")


def _resolve(answer: Answer, reply: object) -> None:
    """Hand a script reply (or the failure in its place) to the check's callback."""
    result: Decision | StoreUnavailable
    if isinstance(reply, StoreUnavailable):
        result = reply
    else:
        try:
            result = _decision(reply)
        except StoreUnavailable as e:
            result = e
    try:
        answer(result)
    except Exception:  # a caller's bug must not break the connection's reply stream
        log.exception("rate-limit check callback failed")


# ----------------------------------------------------------------------------- the store
Answer = Callable[["Decision | StoreUnavailable"], None]
Call = tuple[bytes, bytes, Answer]  # key, packed ARGV, called with the result


class RedisStore:
    """Rate-limit checks in Redis, batched per loop turn (see the module docstring)."""

    def __init__(
        self,
        url: str | None,
        timeout_ms: int,
        *,
        cluster_nodes: Sequence[str] = (),
        sentinel: tuple[str, Sequence[str]] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout_ms / 1000
        self.breaker = Breaker.CLOSED
        self.failures = 0  # failed round trips in a row
        self._failing_since = 0.0  # loop time of the first of them
        self._pending: list[Call] = []
        self._pending_since = 0.0  # when the oldest pending check was queued: its deadline counts from then
        self._flush_scheduled = False
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._waiting_connection: list[tuple[list[Call], float]] = []
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_error_log = -ERROR_LOG_INTERVAL_S
        self._closed = False
        # metrics
        self.backend_errors: dict[str, int] = {"timeout": 0, "connection": 0, "script": 0, "circuit_open": 0}
        self.latency_sum = 0.0
        self.latency_count = 0
        self.latency_buckets = [0] * len(LATENCY_BUCKETS_S)
        self.round_trips = 0
        self.checks_sent = 0
        self.cluster: Any = None
        self.endpoint: Endpoint | None = None
        if cluster_nodes:
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            nodes = [ClusterNode(*_host_port(n)) for n in cluster_nodes]
            kwargs = _redis_kwargs(url)
            self.cluster = RedisCluster(
                startup_nodes=nodes,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                **kwargs,
            )
        else:
            self.endpoint = Endpoint(url or "redis://localhost:6379")
            if sentinel is not None:
                from redis.asyncio.sentinel import Sentinel

                name, hosts = sentinel
                self.endpoint.sentinel = Sentinel(  # type: ignore[no-untyped-call]
                    [_host_port(h) for h in hosts], socket_timeout=self.timeout
                )
                self.endpoint.master_name = name

    def __repr__(self) -> str:
        return (
            f"<RedisStore {self.breaker.value} pending={len(self._pending)} round_trips={self.round_trips}"
            f" checks={self.checks_sent} errors={sum(self.backend_errors.values())}>"
        )

    @property
    def available(self) -> bool:
        """False while the breaker is open: answer without Redis."""
        return self.breaker is Breaker.CLOSED

    @property
    def checks_per_round_trip(self) -> float:
        return self.checks_sent / self.round_trips if self.round_trips else 0.0

    # ------------------------------------------------------------------ checks
    def check(self, key: bytes, args: bytes) -> asyncio.Future[Decision]:
        """`submit` with a future: its result, or StoreUnavailable raised."""
        fut: asyncio.Future[Decision] = self.loop.create_future()

        def answer(result: Decision | StoreUnavailable) -> None:
            if fut.done():
                return
            if isinstance(result, StoreUnavailable):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        self.submit(key, args, answer)
        return fut

    def submit(self, key: bytes, args: bytes, answer: Answer) -> None:
        """Queue one check (ARGV packed by `packed_args`); sent with the loop turn's batch.
        `answer` is called exactly once, with the Decision or a StoreUnavailable, at the
        latest when the deadline passes. (The filter uses this form: no future, no task.)"""
        if not self._pending:
            self._pending_since = self.loop.time()
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush)
        self._pending.append((key, args, answer))

    def _flush(self) -> None:
        """Send the pending checks as one pipeline, unless `MAX_IN_FLIGHT` batches are out:
        then they wait for the first one's replies and go together — larger batches, fewer
        syscalls and wake-ups on both sides, for about one more Redis round trip of delay
        under load. Their deadline still counts from when the oldest was queued."""
        self._flush_scheduled = False
        if not self._pending:
            return
        deadline = self._pending_since + self.timeout
        conn = self._conn
        if self.cluster is None and conn is not None and not conn.lost and conn.in_flight >= MAX_IN_FLIGHT:
            return  # sent from data_received when the batch in flight is answered
        calls, self._pending = self._pending, []
        if self.cluster is not None:
            self._spawn(self._cluster_batch(calls, deadline))
            return
        if conn is not None and not conn.lost:
            self._send(conn, calls, deadline)
            return
        self._waiting_connection.append((calls, deadline))
        if self._connecting is None:
            self._connecting = self._spawn(self._connect())

    def _send(self, conn: _Connection, calls: list[Call], deadline: float, reload: bool = False) -> None:
        handlers: deque[Callable[[object], None]] = deque()
        parts: list[bytes] = []
        if reload:
            parts.append(_SCRIPT_LOAD)
            handlers.append(_ignore)
        retry: list[Call] = []
        for key, args, fut in calls:
            parts.append(_EVALSHA_HEAD)
            parts.append(bulk(key))
            parts.append(args)
            handlers.append(self._handler(key, args, fut, retry, not reload))
        if reload or calls:
            # After the batch: calls that met NOSCRIPT go again behind a SCRIPT LOAD.
            handlers[-1] = _then(handlers[-1], lambda _: self._retry(retry, deadline))
        self.checks_sent += len(calls)
        if deadline <= self.loop.time():  # held past its deadline behind a slow batch
            self.backend_errors["timeout"] += 1
            for _, _, fut in calls:
                _resolve(fut, StoreUnavailable("timeout"))
            return
        conn.write(b"".join(parts), handlers, deadline)

    def _handler(
        self, key: bytes, args: bytes, fut: Answer, retry: list[Call], may_retry: bool
    ) -> Callable[[object], None]:
        def handle(reply: object) -> None:
            if may_retry and _is_noscript(reply):
                retry.append((key, args, fut))
            elif isinstance(reply, hiredis.ReplyError):
                self.backend_errors["script"] += 1
                self._log_error("script", str(reply))
                _resolve(fut, StoreUnavailable("script"))
            else:
                _resolve(fut, reply)

        return handle

    def _retry(self, retry: list[Call], deadline: float) -> None:
        if not retry:
            return
        conn = self._conn
        if conn is None or conn.lost:
            for _, _, fut in retry:
                _resolve(fut, StoreUnavailable("connection"))
            return
        self.checks_sent -= len(retry)  # counted once, when first sent
        self._send(conn, retry, deadline, reload=True)

    async def _connect(self) -> None:
        """Open the connection for the batches waiting on it (within their deadline)."""
        assert self.endpoint is not None
        conn = _Connection(self)
        try:
            waiting = self._waiting_connection
            deadline = min(d for _, d in waiting) if waiting else self.loop.time() + self.timeout
            async with asyncio.timeout_at(deadline):
                await self.endpoint.open(lambda: conn)
                hello = self.endpoint.handshake()
                if hello:
                    replies = await _exchange(conn, b"".join(hello), len(hello), deadline)
                    if conn.lost or any(isinstance(r, Exception) for r in replies):
                        conn.abort("connection")
                        raise StoreUnavailable("connection")
        except BaseException as e:
            if conn.transport is not None and not conn.lost:  # opened, then timed out or cancelled
                conn.lost = True
                conn.transport.abort()
            reason = "timeout" if isinstance(e, TimeoutError) else "connection"
            if isinstance(e, asyncio.CancelledError):
                reason = "connection"
            waiting, self._waiting_connection = self._waiting_connection, []
            for calls, _ in waiting:
                for _, _, fut in calls:
                    _resolve(fut, StoreUnavailable(reason))
            self._failed(reason, e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        finally:
            self._connecting = None
        self._conn = conn
        waiting, self._waiting_connection = self._waiting_connection, []
        for calls, deadline in waiting:
            try:
                self._send(conn, calls, deadline)
            except Exception as e:  # never leave a request waiting on a future nobody resolves
                for _, _, fut in calls:
                    _resolve(fut, StoreUnavailable("connection"))
                self._failed("connection", e)

    async def _cluster_batch(self, calls: list[Call], deadline: float) -> None:
        from redis.exceptions import NoScriptError, RedisError

        started = self.loop.time()
        self.checks_sent += len(calls)
        try:
            async with asyncio.timeout_at(deadline):
                todo = calls
                for attempt in range(2):
                    pipe = self.cluster.pipeline()
                    for key, args, _ in todo:
                        # (redis-py refuses pipe.evalsha() on a cluster; the raw command routes by key)
                        pipe.execute_command("EVALSHA", SCRIPT_SHA, 1, key, *_unpack_args(args))
                    results = await pipe.execute(raise_on_error=False)
                    again: list[Call] = []
                    for call, result in zip(todo, results, strict=True):
                        noscript = isinstance(result, NoScriptError) or str(result).startswith("NOSCRIPT")
                        if noscript and isinstance(result, Exception) and attempt == 0:
                            again.append(call)
                        elif isinstance(result, RedisError | hiredis.ReplyError):
                            self.backend_errors["script"] += 1
                            _resolve(call[2], StoreUnavailable("script"))
                        else:
                            _resolve(call[2], result)
                    if not again:
                        break
                    await self.cluster.script_load(SCRIPT)
                    todo = again
        except Exception as e:
            reason = "timeout" if isinstance(e, TimeoutError) else "connection"
            for _, _, fut in calls:
                _resolve(fut, StoreUnavailable(reason))
            self._failed(reason, e)
            return
        self._round_trip_done(started)

    # ------------------------------------------------------------------ health
    def _round_trip_done(self, started: float) -> None:
        elapsed = self.loop.time() - started
        self.round_trips += 1
        self.latency_sum += elapsed
        self.latency_count += 1
        i = bisect.bisect_left(LATENCY_BUCKETS_S, elapsed)
        if i < len(self.latency_buckets):
            self.latency_buckets[i] += 1
        self.failures = 0

    def _connection_lost(self, conn: _Connection, reason: str) -> None:
        if self._conn is conn:
            self._conn = None
            if not self._closed:
                self._failed(reason, None)
                if self._pending and not self._flush_scheduled:  # held checks: a new connection
                    self._flush_scheduled = True
                    self.loop.call_soon(self._flush)

    def _failed(self, reason: str, error: BaseException | None) -> None:
        self.backend_errors[reason] += 1
        self.failures += 1
        now = self.loop.time()
        if self.failures == 1:
            self._failing_since = now
        self._log_error(reason, repr(error) if error is not None else "")
        if (
            self.failures >= FAILURES_TO_OPEN
            and now - self._failing_since >= OPEN_AFTER_S
            and self.breaker is Breaker.CLOSED
            and not self._closed
        ):
            self.breaker = Breaker.OPEN
            events.emit(
                "ERROR",
                "ratelimit",
                "rate_limit_store_down",
                "Rate-limit store unreachable: circuit open, probing",
                reason=reason,
            )
            self._probe = self._spawn(self._probe_loop())

    async def _probe_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if await self.ping():
                self.breaker = Breaker.CLOSED
                self.failures = 0
                events.emit(
                    "INFO",
                    "ratelimit",
                    "rate_limit_store_up",
                    "Rate-limit store reachable again: circuit closed",
                )
                return

    async def ping(self) -> bool:
        """True when Redis answers PING within timeout_ms (also the readiness probe's check)."""
        try:
            async with asyncio.timeout(max(self.timeout, 0.05)):
                if self.cluster is not None:
                    return bool(await self.cluster.ping())
                assert self.endpoint is not None
                conn = self._conn
                if conn is None or conn.lost:
                    if self._connecting is None:
                        self._connecting = self._spawn(self._connect())
                    await asyncio.shield(self._connecting)
                    conn = self._conn
                    if conn is None or conn.lost:
                        return False
                replies = await _exchange(conn, pack(b"PING"), 1, self.loop.time() + 1)
                return replies == [b"PONG"]
        except Exception:
            return False

    def _log_error(self, reason: str, detail: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            events.emit(
                "ERROR",
                "ratelimit",
                "rate_limit_backend_error",
                "Rate-limit store error",
                reason=reason,
                detail=detail[:200],
            )

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._conn is not None:
            self._conn.abort("connection")
        if self.cluster is not None:
            await self.cluster.aclose()
        if self.endpoint is not None and self.endpoint.sentinel is not None:
            for client in self.endpoint.sentinel.sentinels:
                await client.aclose()


# ----------------------------------------------------------------------------- helpers
def _ignore(reply: object) -> None:
    return None


async def _exchange(conn: _Connection, data: bytes, n: int, deadline: float) -> list[object]:
    """Send commands outside the batches (handshake, PING) and wait for their n replies."""
    replies: list[object] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def got(reply: object) -> None:
        replies.append(reply)
        if len(replies) == n and not done.done():
            done.set_result(None)

    conn.write(data, deque(got for _ in range(n)), deadline, counted=False)
    await done
    return replies


def _then(first: Callable[[object], None], after: Callable[[object], object]) -> Callable[[object], None]:
    def both(reply: object) -> None:
        first(reply)
        after(reply)

    return both


def _host_port(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host.strip("[]") or "localhost", int(port)


def _unpack_args(args: bytes) -> list[bytes]:
    """Packed ARGV back to values (the cluster path builds commands through redis-py)."""
    out = []
    reader = hiredis.Reader()
    reader.feed(b"*%d\r\n" % args.count(b"$") + args)
    reply = reader.gets()
    assert isinstance(reply, list)
    out.extend(reply)
    return out


def _redis_kwargs(url: str | None) -> dict[str, Any]:
    if not url:
        return {}
    e = Endpoint(url)
    kwargs: dict[str, Any] = {}
    if e.password is not None:
        kwargs["password"] = e.password
    if e.username:
        kwargs["username"] = e.username
    if e.ssl is not None:
        kwargs["ssl"] = True
    return kwargs
