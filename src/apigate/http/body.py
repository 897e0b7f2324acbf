"""A request body streamed from the client to whoever consumes it, with backpressure.

The listener feeds chunks as llhttp decodes them; the proxy awaits `read()`. Reading from
the client socket pauses above HIGH_WATER buffered bytes and resumes below LOW_WATER, so
a 1 GiB upload never holds more than about 64 KiB here (uvicorn's flow_control.py).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, Protocol

from apigate.http.errors import HttpError

HIGH_WATER: Final = 64 * 1024
LOW_WATER: Final = 16 * 1024


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


class _Reader(Protocol):
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class BodyReader:
    __slots__ = ("aborted", "chunks", "complete", "max_bytes", "received", "size", "source", "waiter")

    def __init__(self, source: _Reader, max_bytes: int) -> None:
        self.source = source
        self.max_bytes = max_bytes  # 0 = unlimited
        self.chunks: deque[bytes] = deque()
        self.size = 0  # bytes buffered, not yet read
        self.received = 0  # bytes received in total
        self.complete = False
        self.aborted = False
        self.waiter: asyncio.Future[None] | None = None

    # producer side (listener)
    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.max_bytes and self.received > self.max_bytes:
            raise HttpError("payload_too_large")
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > HIGH_WATER:
            self.source.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def abort(self) -> None:
        self.aborted = True
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None:
            self.waiter = None
            if not w.done():
                w.set_result(None)

    # consumer side (proxy)
    async def read(self) -> bytes:
        """Next chunk; b"" at the end of the body. Raises ClientDisconnected."""
        while not self.chunks:
            if self.complete:
                return b""
            if self.aborted:
                raise ClientDisconnected()
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        chunk = self.chunks.popleft()
        self.size -= len(chunk)
        if self.size < LOW_WATER:
            self.source.resume_reading()
        return chunk

    @property
    def exhausted(self) -> bool:
        """Everything was received and read."""
        return self.complete and not self.chunks
