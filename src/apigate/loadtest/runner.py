"""The coordinator: starts the worker processes, merges what they send, shows progress.

Each of the `--workers` processes gets every N-th request of the schedule and a share of
the connections. They connect first, say `ready`, and all start at the same instant
(`go` with a CLOCK_MONOTONIC time, which every process on the machine shares). Once a
second each worker sends its finished seconds; a second is complete, shown and added to
the timeline when every worker has sent it. Ctrl-C stops the schedule: the requests in
flight finish (or time out) and the report covers what ran.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from typing import Any

from apigate.loadtest import histogram
from apigate.loadtest.progress import Progress
from apigate.loadtest.schedule import Profile
from apigate.loadtest.target import Target
from apigate.loadtest.worker import Final, WorkerSpec, worker_main

START_DELAY_S = 0.2  # between `go` and the first request: every worker has read it by then
READY_GRACE_S = 15.0  # beyond --timeout, for the workers to start and connect


class RunError(RuntimeError):
    """The run itself broke (a worker died); shown as one line."""


@dataclass
class SecondStats:
    """One second of the run, all workers merged. Its histogram (~190 KB) is dropped once
    the second is complete and its p99 known: a 30-minute run keeps 1800 floats, not 340 MB."""

    done: int = 0
    errors: int = 0
    hist: Any = None
    p99_ms: float | None = None

    def p99(self) -> float:
        if self.p99_ms is None:
            self.p99_ms = histogram.percentile_ms(self.hist, 99.0)
            self.hist = None
        return self.p99_ms


@dataclass
class RunResult:
    profile: Profile
    target: Target
    workers: int
    connections: int
    timeout: float
    started_at: str
    seconds: list[SecondStats]
    latency: Any  # merged histogram, from the due time
    send_latency: Any  # merged histogram, from the actual write
    lag: Any  # merged histogram of the timers' lateness
    sent: int = 0
    last_send: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    error_kinds: Counter[str] = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    queued: int = 0
    max_queue: int = 0
    connections_opened: int = 0
    interrupted: bool = False
    elapsed: float = 0.0
    cpu_s: float = 0.0  # the workers' CPU time, summed


def split(total: int, parts: int) -> list[int]:
    """`total` as `parts` near-equal integers (connections per worker)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run(profile: Profile, target: Target, workers: int, connections: int, timeout: float) -> RunResult:
    ctx = multiprocessing.get_context("fork")  # the coordinator holds no threads or loop yet
    chans: list[Connection] = []
    procs = []
    for i, conns in enumerate(split(connections, workers)):
        parent, child = ctx.Pipe()
        spec = WorkerSpec(i, workers, profile, target, conns, timeout)
        proc = ctx.Process(target=worker_main, args=(spec, child), name=f"loadtest-worker-{i}", daemon=True)
        proc.start()
        child.close()
        chans.append(parent)
        procs.append(proc)
    try:
        return _coordinate(profile, target, workers, connections, timeout, chans, procs)
    finally:
        for proc in procs:
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _coordinate(
    profile: Profile,
    target: Target,
    workers: int,
    connections: int,
    timeout: float,
    chans: list[Connection],
    procs: list[Any],
) -> RunResult:
    for i, chan in enumerate(chans):
        if not chan.poll(timeout + READY_GRACE_S):
            raise RunError(f"worker {i} did not start within {timeout + READY_GRACE_S:g}s")
        _expect(_recv(chan, i), "ready")
    t0 = time.monotonic() + START_DELAY_S
    result = RunResult(
        profile,
        target,
        workers,
        connections,
        timeout,
        datetime.now(UTC).isoformat(timespec="seconds"),
        [],
        histogram.new(),
        histogram.new(),
        histogram.new(),
    )
    for chan in chans:
        chan.send(("go", t0))
    targets = profile.targets_per_second()
    reported = [-1] * workers  # last second each worker has sent
    sent = [0] * workers
    finals: dict[int, Final] = {}
    shown = -1
    progress = Progress(profile, workers)
    sentinels = {proc.sentinel: i for i, proc in enumerate(procs)}
    interrupts = _Interrupts()
    try:
        while len(finals) < workers:
            if interrupts.count and not result.interrupted:
                _stop(chans, result)
            waiting = [c for i, c in enumerate(chans) if i not in finals]
            ready = wait([*waiting, *(s for s, i in sentinels.items() if i not in finals)], timeout=0.5)
            for obj in ready:
                if obj in sentinels:
                    i = sentinels[obj]
                    if i not in finals and not chans[i].poll():
                        code = procs[i].exitcode
                        raise RunError(f"worker {i} exited unexpectedly (exit code {code})")
                    continue
                i = chans.index(obj)  # type: ignore[arg-type]
                msg = _recv(chans[i], i)
                kind = msg[0]
                if kind == "seconds":
                    for sec, done, errors, data in msg[1]:
                        _merge_second(result, sec, done, errors, data)
                        reported[i] = max(reported[i], sec)
                elif kind == "sent":
                    sent[i] = msg[1]
                elif kind == "done":
                    finals[i] = msg[1]
                    reported[i] = 1 << 30
                else:
                    _expect(msg, "seconds")
            complete = min(reported)
            while shown < min(complete, len(result.seconds) - 1):
                shown += 1
                _show(progress, result, shown, targets)
            if complete < (1 << 30):
                progress.running(time.monotonic() - t0, sum(sent))
    finally:
        interrupts.restore()
        progress.close()
    result.elapsed = time.monotonic() - t0
    for f in finals.values():
        result.sent += f.sent
        result.last_send = max(result.last_send, f.last_send)
        histogram.add_encoded(result.send_latency, f.send_latency)
        histogram.add_encoded(result.lag, f.lag)
        result.statuses.update(f.statuses)
        result.error_kinds.update(f.error_kinds)
        for k, v in f.error_examples.items():
            result.error_examples.setdefault(k, v)
        result.queued += f.queued
        result.max_queue = max(result.max_queue, f.max_queue)
        result.connections_opened += f.connections_opened
        result.interrupted = result.interrupted or f.interrupted
        result.cpu_s += f.cpu_s
    return result


class _Interrupts:
    """Ctrl-C while the coordinator runs: the first one is counted (the loop then stops the
    schedule, wherever the signal landed), a second one raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.count = 0
        self.previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1:  # give up on the stragglers
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _stop(chans: list[Connection], result: RunResult) -> None:
    result.interrupted = True
    for chan in chans:
        with contextlib.suppress(OSError):
            chan.send(("stop",))


def _show(progress: Progress, result: RunResult, sec: int, targets: list[int]) -> None:
    s = result.seconds[sec]
    s.p99()  # complete: every worker has sent it
    p99 = histogram.percentile_ms(result.latency, 99.0)
    progress.second(sec, targets[sec] if sec < len(targets) else 0, s.done, s.errors, p99)


def _merge_second(result: RunResult, sec: int, done: int, errors: int, data: bytes) -> None:
    while len(result.seconds) <= sec:
        result.seconds.append(SecondStats(hist=histogram.new()))
    s = result.seconds[sec]
    s.done += done
    s.errors += errors
    if data:
        histogram.add_encoded(s.hist, data)
        histogram.add_encoded(result.latency, data)


def _recv(chan: Connection, i: int) -> tuple[Any, ...]:
    try:
        msg: tuple[Any, ...] = chan.recv()
    except (EOFError, OSError):
        raise RunError(f"worker {i} exited unexpectedly") from None
    if msg[0] == "fatal":
        raise RunError(f"worker {i} failed: {msg[1]}")
    return msg


def _expect(msg: tuple[Any, ...], kind: str) -> None:
    if msg[0] != kind:
        raise RunError(f"unexpected message from a worker: {msg[0]!r} (expected {kind!r})")
