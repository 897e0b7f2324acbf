"""One load-generating process: an open-loop scheduler over keep-alive connections.

The client is the gateway's own stack: a uvloop `asyncio.Protocol` per connection with
httptools (llhttp) parsing the responses, and the request bytes built once. A timer
fires at each due time and hands every due request to an idle connection; when all
`connections` are busy the request waits in a FIFO until one frees up. Its latency is
measured from the time it was *due*, not from when it went out, so time spent waiting
behind a stalled server is counted (no coordinated omission); the latency from the
actual write is recorded too, and the timer's lateness tells whether this process kept
up with its schedule at all.

Results are aggregated per second of completion: count, errors and an HDR histogram of
the due-time latencies. Once a second the finished seconds go to the coordinator
(runner.py) through a pipe, which merges all workers exactly; at the end a `Final` holds
everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import httptools
import uvloop

from apigate.loadtest import histogram
from apigate.loadtest.schedule import Profile, TimeIterator
from apigate.loadtest.target import Target

TICK_S = 1.0  # how often finished seconds go to the coordinator
SWEEP_S = 0.1  # how often busy connections are checked against --timeout
TIMER_MIN_S = 0.001  # libuv timers have 1 ms resolution: a shorter delay would spin the loop
BATCH = 2000  # due requests sent per timer callback before the loop may read sockets again
STATUS_ERROR_MIN = 400  # 2xx and 3xx are successes; 1xx and >= 400 count as errors


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    workers: int
    profile: Profile
    target: Target
    connections: int
    timeout: float


# (second, completed, errors, encoded histogram of due-time latencies)
Second = tuple[int, int, int, bytes]


@dataclass
class Final:
    """Everything a worker knows at the end, beyond the per-second data."""

    sent: int = 0
    last_send: float = 0.0  # seconds after the start
    send_latency: bytes = b""  # encoded histogram, from the actual write
    lag: bytes = b""  # encoded histogram of the timer's lateness
    statuses: dict[int, int] = field(default_factory=dict)  # every response, by status
    error_kinds: dict[str, int] = field(default_factory=dict)  # errors without a response
    error_examples: dict[str, str] = field(default_factory=dict)  # first message of each kind
    queued: int = 0  # requests that waited for a free connection
    max_queue: int = 0
    connections_opened: int = 0
    interrupted: bool = False
    cpu_s: float = 0.0  # this process's CPU time (user + system) from `go` to the end


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    return "connect"


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Conn(asyncio.Protocol):
    """One keep-alive connection; carries at most one request at a time."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.busy = False
        self.lost = False
        self.due = 0.0  # when the request in flight was due (monotonic)
        self.sent = 0.0  # when it was written (monotonic)
        self.status = 0

    # ---------------------------------------------------------------- protocol interface
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self.worker.on_failed(self, "bad_response", f"unparsable response: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.worker.on_lost(self, exc)

    # ---------------------------------------------------------------- parser callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.worker.target.is_head:  # no body follows, whatever Content-Length says
            self.parser = httptools.HttpResponseParser(self)
            self.worker.on_response(self, self.status, True)

    def on_message_complete(self) -> None:
        self.worker.on_response(self, self.status, self.parser.should_keep_alive())

    # ---------------------------------------------------------------- requests
    def send(self, due: float, data: bytes) -> None:
        self.busy = True
        self.due = due
        self.sent = time.monotonic()
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        self.busy = False
        if self.transport is not None:
            self.transport.abort()


class Worker:
    def __init__(self, spec: WorkerSpec, chan: Connection) -> None:
        self.spec = spec
        self.target = spec.target
        self.chan = chan
        self.loop = asyncio.get_running_loop()
        # request k of the schedule carries requests[k mod n]; this worker sends k = index, index + workers...
        self.requests = spec.target.requests
        self.turn = spec.index % len(self.requests)
        self.turn_step = spec.workers % len(self.requests)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if spec.target.tls else None
        self.max_conns = spec.connections
        self.timeout = spec.timeout
        # connections
        self.conns: set[Conn] = set()  # connected
        self.idle: list[Conn] = []
        self.connecting = 0
        self.pending: deque[float] = deque()  # due times waiting for a free connection
        # schedule
        self.t0 = 0.0
        self.times: TimeIterator = spec.profile.times(spec.index, spec.workers)
        self.next_due: float | None = None
        self.schedule_over = False
        self.finished = asyncio.Event()
        # results
        self.final = Final()
        self.statuses: Counter[int] = Counter()
        self.kinds: Counter[str] = Counter()
        self.send_hist = histogram.new()
        self.lag_hist = histogram.new()
        self.cur_sec = 0
        self.cur_hist = histogram.new()
        self.cur_latencies: list[int] = []  # us from the due time, recorded at the second's end
        self.send_latencies: list[int] = []  # us from the write
        self.lags: list[int] = []  # us the send timer fired late, one per firing
        self.cur_done = 0
        self.cur_errors = 0
        self.seconds: list[Second] = []

    # ---------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        self.connecting = self.max_conns
        await asyncio.gather(*(self._connect() for _ in range(self.max_conns)))
        self.chan.send(("ready", None))
        go = await self._receive()
        if go[0] != "go":
            return
        self.t0 = float(go[1])
        cpu0 = time.process_time()
        self.loop.add_reader(self.chan.fileno(), self._on_command)
        rel = self.times.next()
        self.next_due = None if rel is None else self.t0 + rel
        now = time.monotonic()
        self.loop.call_later(max(self.t0 - now, 0.0), self._on_due)
        self.loop.call_later(max(self.t0 + TICK_S - now, 0.0) + 0.01, self._on_tick, 1)
        self.loop.call_later(SWEEP_S, self._on_sweep)
        if self.next_due is None:
            self._end_schedule()
        await self.finished.wait()
        self.loop.remove_reader(self.chan.fileno())
        self._roll(int(time.monotonic() - self.t0) + 1)
        for conn in list(self.conns):
            conn.close()
        f = self.final
        f.cpu_s = time.process_time() - cpu0
        self._flush()
        f.send_latency = histogram.encode(self.send_hist)
        f.lag = histogram.encode(self.lag_hist)
        f.statuses = dict(self.statuses)
        f.error_kinds = dict(self.kinds)
        self.chan.send(("seconds", self.seconds))
        self.chan.send(("done", f))

    async def _receive(self) -> tuple[Any, ...]:
        ready = self.loop.create_future()
        fd = self.chan.fileno()
        self.loop.add_reader(fd, _resolve, ready)
        try:
            await ready
        finally:
            self.loop.remove_reader(fd)
        msg: tuple[Any, ...] = self.chan.recv()
        return msg

    def _on_command(self) -> None:
        try:
            msg = self.chan.recv()
        except (EOFError, OSError):  # the coordinator is gone
            msg = ("stop",)
        if msg[0] == "stop" and not self.schedule_over:
            self.final.interrupted = True
            self._end_schedule()

    # ---------------------------------------------------------------- the schedule
    def _on_due(self) -> None:
        due = self.next_due
        if due is None or self.schedule_over:
            return
        now = time.monotonic()
        if due > now:  # the timer fired early (its resolution is 1 ms)
            self.loop.call_later(max(due - now, TIMER_MIN_S), self._on_due)
            return
        self.lags.append(int((now - due) * 1e6))
        times, t0 = self.times, self.t0
        n = 0
        while due is not None and due <= now and n < BATCH:
            self._dispatch(due)
            n += 1
            rel = times.next()
            due = None if rel is None else t0 + rel
        self.next_due = due
        if due is None:
            self._end_schedule()
        elif due <= now:
            self.loop.call_soon(self._on_due)
        else:
            self.loop.call_later(max(due - now, TIMER_MIN_S), self._on_due)

    def _dispatch(self, due: float) -> None:
        if self.idle:
            self._send(self.idle.pop(), due)
            return
        self.pending.append(due)
        self.final.queued += 1
        if len(self.pending) > self.final.max_queue:
            self.final.max_queue = len(self.pending)
        self._open_more()

    def _send(self, conn: Conn, due: float) -> None:
        conn.send(due, self.requests[self.turn])
        self.turn += self.turn_step
        if self.turn >= len(self.requests):
            self.turn -= len(self.requests)
        f = self.final
        f.sent += 1
        f.last_send = conn.sent - self.t0

    def _end_schedule(self) -> None:
        self.schedule_over = True
        self.next_due = None
        self.loop.call_later(self.timeout, self._on_drain_deadline)
        self._check_finished()

    def _check_finished(self) -> None:
        if self.schedule_over and not self.pending and not any(c.busy for c in self.conns):
            self.finished.set()

    def _on_drain_deadline(self) -> None:
        if self.finished.is_set():
            return
        msg = "still waiting for a connection --timeout after the schedule ended"
        while self.pending:
            self.pending.popleft()
            self._error("timeout", msg)
        for conn in list(self.conns):
            if conn.busy:
                conn.close()
                self._error("timeout", f"no response within --timeout {self.timeout:g}s")
        self.finished.set()

    # ---------------------------------------------------------------- connections
    def _open_more(self) -> None:
        while len(self.pending) > self.connecting and len(self.conns) + self.connecting < self.max_conns:
            self.connecting += 1  # counted now: the task starts later
            self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        """Open one connection (the caller has counted it in `connecting`)."""
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: Conn(self),
                    self.target.host,
                    self.target.port,
                    ssl=self.ssl,
                    server_hostname=self.target.host if self.ssl else None,
                ),
                self.timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            self.connecting -= 1
            where = f"{self.target.host}:{self.target.port}"
            self._fail_pending(error_kind(e), f"connecting to {where}: {describe(e)}")
            return
        self.connecting -= 1
        self.final.connections_opened += 1
        if conn.lost:  # closed by the server before it could carry a request
            self._fail_pending("closed", "the server closed a new connection at once")
            return
        self.conns.add(conn)
        self._on_free(conn)

    def _fail_pending(self, kind: str, message: str) -> None:
        """A connection opened for the oldest waiting request failed: that request fails,
        the next one gets a new connection (one attempt per request, no retry storm)."""
        if self.pending:
            self.pending.popleft()
            self._error(kind, message)
            self._open_more()
            self._check_finished()

    def _on_free(self, conn: Conn) -> None:
        if self.pending:
            self._send(conn, self.pending.popleft())
        else:
            self.idle.append(conn)
            if self.schedule_over:
                self._check_finished()

    def on_response(self, conn: Conn, status: int, keep_alive: bool) -> None:
        if not conn.busy:  # a response nobody asked for (or after a timeout)
            conn.close()
            return
        now = time.monotonic()
        sec = int(now - self.t0)
        if sec != self.cur_sec:
            self._roll(sec)
        self.cur_latencies.append(int((now - conn.due) * 1e6))
        self.send_latencies.append(int((now - conn.sent) * 1e6))
        self.cur_done += 1
        self.statuses[status] += 1
        if status >= STATUS_ERROR_MIN or status < 200:
            self.cur_errors += 1
        conn.busy = False
        if keep_alive:
            self._on_free(conn)
        else:
            conn.close()

    def on_failed(self, conn: Conn, kind: str, message: str) -> None:
        if conn.busy:
            conn.busy = False
            self._error(kind, message)
        conn.close()

    def on_lost(self, conn: Conn, exc: Exception | None) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            if exc is None:
                self._error("closed", "the server closed the connection before the response was complete")
            else:
                self._error(error_kind(exc), describe(exc))
        self._open_more()
        if self.schedule_over:
            self._check_finished()

    def _on_sweep(self) -> None:
        if self.finished.is_set():
            return
        self._flush()  # small batches: no stall that would show in the worker's own p99
        now = time.monotonic()
        for conn in list(self.conns):
            if conn.busy and now - conn.sent > self.timeout:
                conn.close()
                self._error("timeout", f"no response within --timeout {self.timeout:g}s")
        if self.schedule_over:
            self._check_finished()
        self.loop.call_later(SWEEP_S, self._on_sweep)

    # ---------------------------------------------------------------- results
    def _error(self, kind: str, message: str) -> None:
        sec = int(time.monotonic() - self.t0)
        if sec != self.cur_sec:
            self._roll(sec)
        self.cur_done += 1
        self.cur_errors += 1
        self.kinds[kind] += 1
        self.final.error_examples.setdefault(kind, message)

    def _flush(self) -> None:
        """Move the latencies collected since the last flush into their histograms."""
        histogram.record_many(self.cur_hist, self.cur_latencies)
        self.cur_latencies.clear()
        histogram.record_many(self.send_hist, self.send_latencies)
        self.send_latencies.clear()
        histogram.record_many(self.lag_hist, self.lags)
        self.lags.clear()

    def _roll(self, sec: int) -> None:
        """Close the seconds before `sec` (completions come in time order)."""
        while self.cur_sec < sec:
            self._flush()
            self.seconds.append(
                (self.cur_sec, self.cur_done, self.cur_errors, histogram.encode(self.cur_hist))
            )
            if self.cur_done:
                self.cur_hist = histogram.new()  # 0.1 ms; reset() loops over every count (1 ms)
            self.cur_done = self.cur_errors = 0
            self.cur_sec += 1

    def _on_tick(self, sec: int) -> None:
        if self.finished.is_set():
            return
        self._roll(max(sec, int(time.monotonic() - self.t0)))  # the timer may fire a little early
        if self.seconds:
            self.chan.send(("seconds", self.seconds))
            self.seconds = []
        self.chan.send(("sent", self.final.sent))
        delay = self.t0 + (sec + 1) * TICK_S - time.monotonic()
        self.loop.call_later(max(delay, 0.0) + 0.01, self._on_tick, sec + 1)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def worker_main(spec: WorkerSpec, chan: Connection) -> None:
    """A worker process's entry point: Ctrl-C is the coordinator's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        uvloop.run(_run(spec, chan))
    except Exception as e:  # reported by the coordinator as one line, never a traceback
        with contextlib.suppress(OSError):
            chan.send(("fatal", describe(e)))


async def _run(spec: WorkerSpec, chan: Connection) -> None:
    await Worker(spec, chan).run()
