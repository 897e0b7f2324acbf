"""What every sink shares: a bounded queue, batching, retry with backoff, the disk spool.

Kong's log phase, per sink: the request path only appends to a bounded in-memory queue.
Full, the queue moves to the disk spool when the sink has one (whatever the background
task is doing: a first `open()` or a `send()` can take seconds, and the producer does not
wait for it); without a spool the oldest event is dropped and counted. A background task
takes batches of `batch_size` (or whatever is there after `flush_interval`) and hands them
to `send()`.

- `send()` raises `SinkUnavailable` when the whole batch can be retried later (network
  down, 429, 5xx): the sink is marked down, the batch and the queue move to the disk
  spool, and delivery is retried with capped exponential backoff (0.5 s doubling to
  15 s, with jitter).
- `send()` returns the records that failed on their own and may succeed later (per-item
  429s of a `_bulk`); they are retried after a backoff, ahead of newer events.
- Records refused for good are counted as dropped (`rejected`) inside `send()`.
- While the spool holds anything, new events go behind it, so delivery stays in order;
  it is drained first when the sink is back (also by a new process after a restart).
  Retries are older than anything in the spool and are sent before it; they join the
  spool only when it is empty (or at exit).
- `close(deadline)` (SIGTERM) sends what is queued until the deadline and spools the rest.

Without a spool directory (not creatable), a down sink keeps its events in memory up to
the queue bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import Iterable
from pathlib import Path

from apigate.logs import names
from apigate.logs.record import Record
from apigate.logs.spool import Spool

QUEUE_MAX_EVENTS = 20_000
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 15.0
SPILL_EVERY_S = 0.25  # while down, how often the queue is moved to the spool


class SinkUnavailable(Exception):
    """The whole batch can be retried later."""


class Sink:
    """Base class; subclasses implement `send` (and `open`/`close_backend` when needed)."""

    kind = "sink"
    uses_spool = True  # stdout and file have nowhere better to keep events

    def __init__(
        self,
        name: str,
        min_level: int,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        queue_max: int = QUEUE_MAX_EVENTS,
    ) -> None:
        self.name = name
        self.min_level = min_level
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue: collections.deque[Record] = collections.deque()
        self.queue_max = queue_max
        self.retry: list[Record] = []
        self.stats = names.SinkStats()
        self.spool: Spool | None = None
        self.down = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._backoff = BACKOFF_FIRST_S
        self.on_state_change: list[object] = []  # callbacks (sink, down: bool); see pipeline

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} queue={len(self.queue)} down={self.down}"
            f" spool={self.spool_bytes}>"
        )

    # ------------------------------------------------------------------ what subclasses do
    async def open(self) -> None:
        """Prepare the backend (open a file, create a log group); may raise SinkUnavailable."""

    async def send(self, batch: list[Record]) -> list[Record]:
        """Deliver a batch; return the records to retry later; raise SinkUnavailable."""
        raise NotImplementedError

    async def close_backend(self) -> None:
        """Release connections and files."""

    # ------------------------------------------------------------------ the producer side
    def attach_spool(self, directory: Path, max_bytes: int) -> None:
        self.spool = Spool(directory, max_bytes)

    @property
    def spool_bytes(self) -> int:
        return self.spool.bytes if self.spool is not None else 0

    @property
    def queue_depth(self) -> int:
        return len(self.queue) + len(self.retry)

    def offer(self, record: Record) -> None:
        """Enqueue (never waits for the sink): full, the queue moves to the spool; without
        one, the oldest event goes, counted."""
        q = self.queue
        if len(q) >= self.queue_max and not self._overflow():
            q.popleft()
            self.stats.dropped[names.DROP_QUEUE_FULL] += 1
        q.append(record)
        if len(q) >= self.batch_size:
            self._wake.set()

    # ------------------------------------------------------------------ the background task
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"log-sink-{self.name}")

    async def close(self, timeout: float) -> None:
        """Flush within `timeout`, spool what could not be sent, stop the task."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        self._spill(final=True)
        with contextlib.suppress(Exception):
            await self.close_backend()

    def _overflow(self) -> bool:
        """The queue is full: move it behind the spool. False when there is no spool to
        take it (the caller drops the oldest). The background task may be anywhere (in a
        slow first `open()`, in a `send()` up to its timeouts) and still the producer
        loses nothing while the spool has room."""
        if self.spool is None or not self.uses_spool:
            return False
        try:
            self._count_spool_drops(self.spool.append(list(self.queue)))
        except OSError:
            self.stats.errors += 1
            return False
        self.queue.clear()
        return True

    def _spill(self, final: bool = False) -> None:
        """Move retries and the queue behind the spool (or count them lost when final).

        Retries are older than whatever the spool holds (a batch is taken from the queue
        only while the spool is empty; the queue may overflow into the spool while that
        batch is out): with a non-empty spool they stay in memory, where `_run` sends them
        first, so the order holds. At exit they go behind it."""
        keep_retry = not final and self.spool is not None and self.uses_spool and bool(self.spool)
        records = ([] if keep_retry else self.retry) + list(self.queue)
        if not records:
            return
        if not keep_retry:
            self.retry = []
        self.queue.clear()
        if self.spool is not None and self.uses_spool:
            try:
                self._count_spool_drops(self.spool.append(records))
                return
            except OSError:
                self.stats.errors += 1
        if final:
            self.stats.dropped[names.DROP_SHUTDOWN] += len(records)
        else:
            self.queue.extend(records[-self.queue_max :])
            if len(records) > self.queue_max:
                self.stats.dropped[names.DROP_QUEUE_FULL] += len(records) - self.queue_max

    def _count_spool_drops(self, n: int) -> None:
        if n:
            self.stats.dropped[names.DROP_SPOOL_FULL] += n

    def _set_down(self, down: bool) -> None:
        if down != self.down:
            self.down = down
            for cb in self.on_state_change:
                cb(self, down)  # type: ignore[operator]

    async def _wait_for_batch(self) -> None:
        if self._stopping or len(self.queue) >= self.batch_size or self.retry:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.flush_interval)

    async def _backoff_sleep(self) -> None:
        delay = self._backoff * (0.75 + random.random() / 2)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        while not self._stopping:
            self._spill()
            left = end - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, SPILL_EVERY_S))

    def _take(self, n: int) -> list[Record]:
        q = self.queue
        n = min(n, len(q))
        return [q.popleft() for _ in range(n)]

    async def _run(self) -> None:
        opened = False
        while True:
            if not opened:
                try:
                    await self.open()
                    opened = True
                except Exception:
                    self.stats.errors += 1
                    self._set_down(True)
                    if self._stopping:
                        return
                    await self._backoff_sleep()
                    continue
            spool = self.spool if self.uses_spool else None
            from_spool = False
            if self.retry:
                batch, self.retry = self.retry[: self.batch_size], self.retry[self.batch_size :]
            elif spool is not None and spool:
                if self._stopping and self.down:
                    return
                self._spill()  # keep order: whatever is queued goes behind the spool
                batch = spool.read(self.batch_size)
                from_spool = True
            else:
                await self._wait_for_batch()
                if spool is not None and spool:
                    continue  # the queue overflowed into the spool meanwhile: it goes first
                if self._stopping and not self.queue and not self.retry:
                    return
                batch = self._take(self.batch_size)
                if not batch:
                    continue
            try:
                again = await self.send(batch)
            except asyncio.CancelledError:
                if not from_spool:
                    self.retry = batch + self.retry
                raise
            except Exception:
                self.stats.errors += 1
                self._set_down(True)
                if not from_spool:
                    self.retry = batch + self.retry
                if self._stopping:
                    return
                await self._backoff_sleep()
                continue
            if from_spool and spool is not None:
                spool.commit()
            self._set_down(False)
            self._backoff = BACKOFF_FIRST_S
            if again:
                # Some items failed on their own (per-item 429): the backend answers, so
                # retry them after the first backoff step, ahead of newer events.
                self.stats.errors += 1
                self.retry = list(again) + self.retry
                if self._stopping:
                    return
                await self._backoff_sleep()
                self._backoff = BACKOFF_FIRST_S

    def delivered(self, records: Iterable[Record] | int) -> None:
        self.stats.events += records if isinstance(records, int) else sum(1 for _ in records)

    def rejected(self, n: int) -> None:
        if n:
            self.stats.dropped[names.DROP_REJECTED] += n
