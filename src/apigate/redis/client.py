"""`RedisClient`: every command of a loop turn in one pipelined round trip, a deadline per
round trip, and a circuit breaker.

Why it is built this way (DESIGN.md, "Redis"): one call per request through redis-py caps
a worker near 10k calls/s on its own; pipelined, the same calls reach ~77k/s. So
`submit()` only queues a command with a callback; the first command of a loop turn
schedules `_flush` with `call_soon`, which runs after every request of the turn has been
read and writes all of them as one pipeline. Callers that batch their own way (sessions:
one MGET for all the tokens of a turn) register `at_flush(hook)`, called at that moment.
For one Redis (redis://, rediss://, unix://, or the master Sentinel names) the client
speaks RESP itself on a single connection (an asyncio Protocol feeding hiredis): batches
are written synchronously, no task per batch and none per command, and replies go to the
callbacks in order. For Redis Cluster the batch goes through redis-py's cluster pipeline,
which groups the commands by node and sends one pipeline to each node concurrently.

Deadlines: a batch has `timeout` from the moment it is written to the socket (not from
when its commands were queued: the rest of a busy loop turn is not Redis being slow).
When its timer fires and the replies are still missing, the client first asks the socket
whether bytes wait unread: if so, the loop was too busy to read them (a starved loop runs
its timers before it polls for I/O), and the timer is set again a moment later, so that
the reply is read rather than reported as an outage. Otherwise the commands still waiting
fail with `StoreUnavailable("timeout")` and the connection is dropped (replies arriving
late would be out of step). A failed connect fails the batch at once. Commands held behind
`MAX_IN_FLIGHT` unanswered batches wait at most `timeout` for them (the hold timer, with
the same check).

Circuit breaker (breaker.py): while open, `available` is False and callers answer without
Redis; a probe (connect + PING) runs every PROBE_INTERVAL_S and its first success closes it.

Counters (exported by whichever feature owns the client):
- `backend_errors[reason]`: `timeout`, `connection` (callers may add their own reasons).
- `latency_sum`, `latency_count`, `latency_buckets` (observations per bucket, upper
  bounds in `LATENCY_BUCKETS_S`, not cumulative; slower ones only in latency_count):
  one observation per round trip, write to last reply.
- `round_trips`, `commands_sent`, and `starved`: deadlines that found a reply waiting
  unread (loop starvation, not counted as a failure).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import select
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from apigate.logs import events as logevents
from apigate.redis.breaker import PROBE_INTERVAL_S, Breaker, CircuitBreaker
from apigate.redis.endpoint import Endpoint, RedisTarget, open_cluster, open_endpoint
from apigate.redis.resp import ReplyError, Script, is_noscript, pack, unpack

log = logging.getLogger("apigate.redis")

# Batches awaiting replies on the connection; later commands wait and go together.
# 2, not 1: with one, the gateway idles while Redis is slow to wake (bench/README.md).
MAX_IN_FLIGHT = 2
ERROR_LOG_INTERVAL_S = 10.0  # at most one error event per interval
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A deadline that finds reply bytes unread looks again this much later (the loop reads them
# in between) ...
UNREAD_RECHECK_S = 0.001
# ... for at most this long past the deadline: a loop that never reads is failed anyway.
STARVED_MAX_S = 1.0


class StoreUnavailable(Exception):
    """Redis could not answer in time; `reason` is a backend_errors label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Called exactly once with the reply (a hiredis value; an error reply as a ReplyError
# value) or with StoreUnavailable in its place.
Answer = Callable[[object], None]
Call = tuple[bytes, "Script | None", Answer]  # packed command, its script (NOSCRIPT retry), callback


@dataclass(frozen=True)
class ClientEvents:
    """The events a client's owner logs under its own names (docs list them per feature)."""

    component: str
    error: str  # a failed round trip or an error reply, at most one per ERROR_LOG_INTERVAL_S
    error_message: str
    down: str  # the breaker opened
    down_message: str
    up: str  # the breaker closed again
    up_message: str

    @classmethod
    def for_store(
        cls, component: str, prefix: str, what: str, error: str, error_message: str
    ) -> ClientEvents:
        """`<prefix>_store_down` / `<prefix>_store_up` with messages about `what`, and the
        owner's own error event."""
        return cls(
            component,
            error,
            error_message,
            f"{prefix}_store_down",
            f"{what} unreachable: circuit open, probing",
            f"{prefix}_store_up",
            f"{what} reachable again: circuit closed",
        )


class _Batch:
    """Replies expected for one write, in order: one call per reply. `retry` collects the
    calls that met NOSCRIPT (None: none may retry, as in the batch that reloads them)."""

    __slots__ = ("calls", "counted", "deadline", "retry", "started", "timer")

    def __init__(
        self, calls: deque[Call], started: float, deadline: float, counted: bool, retry: list[Call] | None
    ) -> None:
        self.calls = calls
        self.started = started
        self.deadline = deadline
        self.counted = counted  # a round trip of commands (not a handshake or a probe)
        self.retry = retry
        self.timer: asyncio.TimerHandle | None = None


class _Connection(asyncio.Protocol):
    """One RESP connection: writes are pipelined, replies go to the batches in order."""

    def __init__(self, client: RedisClient) -> None:
        import hiredis

        self.client = client
        self.reader = hiredis.Reader()
        self.batches: deque[_Batch] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.in_flight = 0  # counted batches written and not yet answered

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
            call = batch.calls.popleft()
            if (
                type(reply) is ReplyError
                and call[1] is not None
                and batch.retry is not None
                and is_noscript(reply)
            ):
                batch.retry.append(call)
            else:
                _deliver(call[2], reply)
            if not batch.calls:
                batches.popleft()
                if batch.timer is not None:
                    batch.timer.cancel()
                if batch.retry:  # after the batch: calls that met NOSCRIPT go again behind SCRIPT LOAD
                    self.client._retry(batch.retry)
                if batch.counted:
                    self.in_flight -= 1
                    self.client._round_trip_done(batch.started)
                    if self.client._pending:  # commands held while this batch was out
                        self.client._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client._connection_lost(self, "connection")
        self._fail_all("connection")

    def _fail_all(self, reason: str) -> None:
        batches, self.batches = self.batches, deque()
        self.in_flight = 0
        for batch in batches:
            if batch.timer is not None:
                batch.timer.cancel()
            error = StoreUnavailable(reason)
            for call in batch.calls:
                _deliver(call[2], error)
            for call in batch.retry or ():  # met NOSCRIPT, waiting for the batch's end
                _deliver(call[2], error)

    def abort(self, reason: str) -> None:
        """Drop the connection, failing every batch still waiting with `reason`."""
        self.lost = True
        self._fail_all(reason)
        if self.transport is not None:
            self.transport.abort()
        self.client._connection_lost(self, reason)

    def write(
        self,
        data: bytes,
        calls: deque[Call],
        timeout: float,
        counted: bool = True,
        retry: list[Call] | None = None,
    ) -> None:
        assert self.transport is not None
        loop = self.client.loop
        now = loop.time()
        batch = _Batch(calls, now, now + timeout, counted, retry)
        batch.timer = loop.call_at(batch.deadline, self._expire, batch)
        self.batches.append(batch)
        if counted:
            self.in_flight += 1
        self.transport.write(data)

    def _expire(self, batch: _Batch) -> None:
        if not batch.calls:
            return
        loop = self.client.loop
        if self.unread() and loop.time() - batch.deadline < STARVED_MAX_S:
            self.client.starved += 1
            batch.timer = loop.call_at(loop.time() + UNREAD_RECHECK_S, self._expire, batch)
            return
        self.abort("timeout")

    def unread(self) -> bool:
        """True when bytes from Redis wait in the socket: the loop has not read them yet."""
        if self.transport is None or self.lost:
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            poller = select.poll()  # (not select.select: descriptors above 1024 are common here)
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False


def _deliver(answer: Answer, reply: object) -> None:
    try:
        answer(reply)
    except Exception:  # a caller's bug must not break the connection's reply stream
        log.exception("redis reply callback failed")


class RedisClient:
    """Commands to one Redis target, batched per loop turn (see the module docstring)."""

    def __init__(
        self,
        target: RedisTarget,
        timeout_s: float,
        events: ClientEvents | None = None,
        *,
        breaker: bool = True,
    ) -> None:
        """`events`: the owner's event names (None: no events). `breaker=False`: never
        open (the readiness check pings on its own schedule and must see every failure)."""
        self.target = target
        self.use_breaker = breaker
        self.timeout = timeout_s
        self.events = events
        self.breaker = CircuitBreaker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Call] = []
        self._hooks: list[Callable[[], None]] = []
        self._flush_scheduled = False
        self._hold: asyncio.TimerHandle | None = None  # commands held behind MAX_IN_FLIGHT
        self._hold_deadline = 0.0
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._waiting_connection: list[tuple[list[Call], float]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._error_log = logevents.Throttle(ERROR_LOG_INTERVAL_S)
        self._closed = False
        # metrics
        self.backend_errors: dict[str, int] = {"timeout": 0, "connection": 0}
        self.latency_sum = 0.0
        self.latency_count = 0
        self.latency_buckets = [0] * len(LATENCY_BUCKETS_S)
        self.round_trips = 0
        self.commands_sent = 0
        self.starved = 0
        self.last_error = ""  # the latest failure, for a command-line tool's message
        self.cluster: Any = None
        self.endpoint: Endpoint | None = None
        if target.cluster_nodes:
            self.cluster = open_cluster(target, timeout_s)
        else:
            self.endpoint = open_endpoint(target, timeout_s)

    def __repr__(self) -> str:
        return (
            f"<RedisClient {self.target} {self.breaker.state.value} pending={len(self._pending)}"
            f" round_trips={self.round_trips} commands={self.commands_sent}"
            f" errors={sum(self.backend_errors.values())} starved={self.starved}>"
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the client runs on: the running one when it is first used."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def available(self) -> bool:
        """False while the breaker is open: answer without Redis."""
        return self.breaker.state is Breaker.CLOSED

    def start(self) -> None:
        """Open the connection now, in the background, before traffic arrives (a filter's
        `start()`): a first connect during a burst of requests shares a busy loop."""
        if self.endpoint is not None and self._conn is None and self._connecting is None and not self._closed:
            self._connecting = self._spawn(self._connect())

    # ------------------------------------------------------------------ commands
    def submit(self, command: bytes, answer: Answer, script: Script | None = None) -> None:
        """Queue one packed command; written with the loop turn's batch. `answer` is called
        exactly once: with the reply, or a StoreUnavailable at the latest when the deadline
        passes. A command that calls `script` by EVALSHA names it, for the NOSCRIPT retry."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        self._pending.append((command, script, answer))

    def at_flush(self, hook: Callable[[], None]) -> None:
        """Call `hook` when this loop turn's batch is written, just before: it may submit."""
        self._hooks.append(hook)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def call(self, command: bytes, script: Script | None = None) -> asyncio.Future[object]:
        """`submit` with a future: the reply; StoreUnavailable (or an error reply) raised."""
        fut: asyncio.Future[object] = self.loop.create_future()

        def answer(reply: object) -> None:
            if fut.done():
                return
            if isinstance(reply, StoreUnavailable | ReplyError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

        self.submit(command, answer, script)
        return fut

    def _flush(self) -> None:
        """Send the pending commands as one pipeline, unless `MAX_IN_FLIGHT` batches are
        out: then they wait for the first one's replies and go together — larger batches,
        fewer syscalls and wake-ups on both sides, for about one more Redis round trip of
        delay under load."""
        self._flush_scheduled = False
        if self._hooks:
            hooks, self._hooks = self._hooks, []
            self._flush_scheduled = True  # what the hooks submit goes with this flush
            try:
                for hook in hooks:
                    hook()
            finally:
                self._flush_scheduled = False
        if not self._pending:
            return
        conn = self._conn
        if self.cluster is None and conn is not None and not conn.lost and conn.in_flight >= MAX_IN_FLIGHT:
            if self._hold is None:  # sent from data_received when the batch in flight is answered
                self._hold_deadline = self.loop.time() + self.timeout
                self._hold = self.loop.call_at(self._hold_deadline, self._hold_expired)
            return
        calls, self._pending = self._pending, []
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        if self.cluster is not None:
            self._spawn(self._cluster_batch(calls, self.loop.time() + self.timeout))
            return
        if conn is not None and not conn.lost:
            self._send(conn, calls)
            return
        self._waiting_connection.append((calls, self.loop.time() + self.timeout))
        if self._connecting is None:
            self._connecting = self._spawn(self._connect())

    def _hold_expired(self) -> None:
        self._hold = None
        if not self._pending:
            return
        conn = self._conn
        now = self.loop.time()
        if conn is not None and conn.unread() and now - self._hold_deadline < STARVED_MAX_S:
            self.starved += 1
            self._hold = self.loop.call_at(now + UNREAD_RECHECK_S, self._hold_expired)
            return
        calls, self._pending = self._pending, []
        self.backend_errors["timeout"] += 1
        for _, _, answer in calls:
            _deliver(answer, StoreUnavailable("timeout"))

    def _send(self, conn: _Connection, calls: list[Call], reload: tuple[Script, ...] = ()) -> None:
        replies: deque[Call] = deque((script.load, None, _ignore) for script in reload)
        replies.extend(calls)
        self.commands_sent += len(calls)
        conn.write(b"".join(c[0] for c in replies), replies, self.timeout, retry=None if reload else [])

    def _retry(self, retry: list[Call]) -> None:
        if not retry:
            return
        conn = self._conn
        if conn is None or conn.lost:
            for _, _, answer in retry:
                _deliver(answer, StoreUnavailable("connection"))
            return
        self.commands_sent -= len(retry)  # counted once, when first sent
        scripts = tuple({id(c[1]): c[1] for c in retry if c[1] is not None}.values())
        self._send(conn, retry, reload=scripts)

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
                    data = b"".join(pack(*c) for c in hello)
                    replies = await _exchange(conn, data, len(hello), self.timeout)
                    if conn.lost or any(isinstance(r, Exception) for r in replies):
                        conn.abort("connection")
                        raise StoreUnavailable("connection")
        except BaseException as e:
            if conn.transport is not None and not conn.lost:  # opened, then timed out or cancelled
                conn.lost = True
                conn.transport.abort()
            reason = "timeout" if isinstance(e, TimeoutError) else "connection"
            waiting, self._waiting_connection = self._waiting_connection, []
            for calls, _ in waiting:
                for _, _, answer in calls:
                    _deliver(answer, StoreUnavailable(reason))
            self._failed(reason, e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        finally:
            self._connecting = None
        self._conn = conn
        waiting, self._waiting_connection = self._waiting_connection, []
        for calls, _ in waiting:
            try:
                self._send(conn, calls)
            except Exception as e:  # never leave a caller waiting on a callback nobody calls
                for _, _, answer in calls:
                    _deliver(answer, StoreUnavailable("connection"))
                self._failed("connection", e)

    async def _cluster_batch(self, calls: list[Call], deadline: float) -> None:
        from redis.exceptions import NoScriptError

        started = self.loop.time()
        self.commands_sent += len(calls)
        try:
            async with asyncio.timeout_at(deadline):
                todo = calls
                for attempt in range(2):
                    pipe = self.cluster.pipeline()
                    for command, _, _ in todo:
                        args: list[Any] = unpack(command)
                        args[0] = args[0].decode()  # redis-py routes by the command's name as text
                        pipe.execute_command(*args)
                    results = await pipe.execute(raise_on_error=False)
                    again: list[Call] = []
                    for call, result in zip(todo, results, strict=True):
                        if isinstance(result, Exception):
                            noscript = isinstance(result, NoScriptError) or str(result).startswith("NOSCRIPT")
                            if noscript and call[1] is not None and attempt == 0:
                                again.append(call)
                                continue
                            result = ReplyError(str(result))
                        _deliver(call[2], result)
                    if not again:
                        break
                    for script in {id(c[1]): c[1] for c in again if c[1] is not None}.values():
                        await self.cluster.script_load(script.source)
                    todo = again
        except Exception as e:
            reason = "timeout" if isinstance(e, TimeoutError) else "connection"
            for _, _, answer in calls:
                _deliver(answer, StoreUnavailable(reason))
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
        self.breaker.succeeded()

    def _connection_lost(self, conn: _Connection, reason: str) -> None:
        if self._conn is conn:
            self._conn = None
            if not self._closed:
                self._failed(reason, None)
                if self._pending and not self._flush_scheduled:  # held commands: a new connection
                    self._flush_scheduled = True
                    self.loop.call_soon(self._flush)

    def _failed(self, reason: str, error: BaseException | None) -> None:
        self.backend_errors[reason] += 1
        self.log_error(reason, repr(error) if error is not None else "")
        if self.use_breaker and self.breaker.failed(self.loop.time()) and not self._closed:
            if self.events is not None:
                ev = self.events
                logevents.emit("ERROR", ev.component, ev.down, ev.down_message, reason=reason)
            self._spawn(self._probe_loop())

    async def _probe_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if await self.ping():
                self.breaker.close()
                if self.events is not None:
                    ev = self.events
                    logevents.emit("INFO", ev.component, ev.up, ev.up_message)
                return

    async def ping(self) -> bool:
        """True when Redis answers PING within the timeout (also the readiness check)."""
        try:
            async with asyncio.timeout(max(self.timeout, 0.05)):
                if self.cluster is not None:
                    return bool(await self.cluster.ping())
                conn = self._conn
                if conn is None or conn.lost:
                    if self._connecting is None:
                        self._connecting = self._spawn(self._connect())
                    await asyncio.shield(self._connecting)
                    conn = self._conn
                    if conn is None or conn.lost:
                        return False
                replies = await _exchange(conn, pack(b"PING"), 1, 1.0)
                return replies == [b"PONG"]
        except Exception:
            return False

    def log_error(self, reason: str, detail: str) -> None:
        """The owner's error event, at most one per ERROR_LOG_INTERVAL_S."""
        self.last_error = f"{reason}: {detail}" if detail else reason
        if self.events is not None and self._error_log.ready():
            ev = self.events
            detail = detail[:200]
            logevents.emit("ERROR", ev.component, ev.error, ev.error_message, reason=reason, detail=detail)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        self._closed = True
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        for task in list(self._tasks):
            task.cancel()
        if self._conn is not None:
            self._conn.abort("connection")
        pending, self._pending = self._pending, []
        waiting, self._waiting_connection = self._waiting_connection, []
        for _, _, answer in pending + [call for calls, _ in waiting for call in calls]:
            _deliver(answer, StoreUnavailable("connection"))
        if self.cluster is not None:
            await self.cluster.aclose()
        if self.endpoint is not None and self.endpoint.sentinel is not None:
            for client in self.endpoint.sentinel.sentinels:
                await client.aclose()


# ----------------------------------------------------------------------------- helpers
def _ignore(reply: object) -> None:
    return None


async def _exchange(conn: _Connection, data: bytes, n: int, timeout: float) -> list[object]:
    """Send commands outside the batches (handshake, PING) and wait for their n replies."""
    replies: list[object] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def got(reply: object) -> None:
        replies.append(reply)
        if len(replies) == n and not done.done():
            done.set_result(None)

    conn.write(data, deque((b"", None, got) for _ in range(n)), timeout, counted=False)
    await done
    return replies
