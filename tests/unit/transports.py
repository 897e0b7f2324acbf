"""Fake transports on a real event loop, for driving the listener and the upstream pool
without sockets (the shape of uvicorn's tests/protocols: a transport that records what is
written, `connection_made`, `data_received`, then assertions on the bytes).

The protocols under test are the real ones, compiled or not: they only call the transport
and loop methods below, by name, so these stand-ins work against either build.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httptools
import uvloop


class FakeTransport:
    """Records writes and flow-control calls. Strict where uvloop is: writing after
    `close()` or `write_eof()` raises. `close()` delivers `connection_lost` on the next
    loop iteration, as a real transport does."""

    def __init__(self, peer: tuple[str, int] | str = ("127.0.0.1", 50000)) -> None:
        self.peer = peer
        self.protocol: Any = None
        self.written = bytearray()
        self.writes = 0  # write()/writelines() calls: a corked response leaves in one
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading_paused = False
        self.pauses = 0
        self.lost = False

    def attach(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.connection_made(self)

    # -- the transport interface the protocols use
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        if self.closed:
            raise RuntimeError("write() on a closed transport")
        if self.eof_written:
            raise RuntimeError("write() after write_eof()")
        self.written += data
        self.writes += 1

    def writelines(self, chunks: list[bytes]) -> None:
        if self.closed or self.eof_written:
            raise RuntimeError("writelines() on a closed transport")
        for chunk in chunks:
            self.written += chunk
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading_paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading_paused = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self._lose, None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    # -- the peer's side
    def peer_closes(self, exc: Exception | None = None) -> None:
        """The other end closed or reset the connection: the loop reports it at once."""
        self.closed = True
        self._lose(exc)

    def _lose(self, exc: Exception | None) -> None:
        if not self.lost and self.protocol is not None:
            self.lost = True
            self.protocol.connection_lost(exc)

    def peer_half_closes(self) -> None:
        """The other end sent FIN: asyncio asks the protocol, and closes the transport
        unless it answers True (`connection_lost` follows on the next iteration)."""
        if not self.protocol.eof_received():
            self.close()

    def take(self) -> bytes:
        """What was written since the last take()."""
        data = bytes(self.written)
        self.written.clear()
        return data


class FakeNetLoop(uvloop.Loop):
    """uvloop's loop (timers, futures, tasks are real) whose outgoing connections are fake
    transports: `create_connection` attaches the protocol to a FakeTransport at once, or
    fails as told by `refuse`/`hang`."""

    def __init__(self) -> None:
        super().__init__()
        self.connects: list[tuple[str, int]] = []
        self.transports: list[FakeTransport] = []
        self.refuse = False  # connection refused
        self.hang = False  # no answer to the SYN

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], Any], host: str, port: int, **_: Any
    ) -> tuple[FakeTransport, Any]:
        self.connects.append((host, port))
        if self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        if self.hang:
            await asyncio.sleep(3600)
        protocol = protocol_factory()
        transport = FakeTransport((host, port))
        self.transports.append(transport)
        transport.attach(protocol)
        return transport, protocol


def net_loop() -> FakeNetLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, FakeNetLoop)
    return loop


def run_in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh FakeNetLoop (uvloop, the production loop)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=FakeNetLoop) as runner:
            runner.run(test(*args, **kwargs))

    return wrapper


async def settle() -> None:
    """Let callbacks scheduled with call_soon (connection_lost after close) run."""
    for _ in range(3):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------- responses


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]  # lower-cased names
    body: bytes = b""
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class _Collector:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self.current: Response | None = None
        self.raw: list[tuple[bytes, bytes]] = []

    def on_message_begin(self) -> None:
        self.raw = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        headers = {n.lower(): v for n, v in self.raw}
        self.current = Response(self.parser.get_status_code(), headers, b"", self.raw)

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        assert self.current is not None
        self.done.append(self.current)
        self.current = None


def parse_responses(data: bytes) -> list[Response]:
    """Every complete response in `data` (chunked bodies decoded); an incomplete last
    response fails the test, as do bytes that are not HTTP."""
    collector = _Collector()
    collector.parser.feed_data(data)
    assert collector.current is None, f"incomplete response after {len(collector.done)}: {data!r}"
    return collector.done
