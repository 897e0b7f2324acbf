"""A small strict HTTP/1.1 server core shared by the ES and HEC test servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Reply = tuple[int, bytes]
Handler = Callable[[str, str, dict[str, str], bytes], Awaitable[Reply]]

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_reply(status: int, body: Any) -> Reply:
    return status, orjson.dumps(body)


class ThreadedServer:
    """Runs `handle(method, path, headers, body)` per request; `down()`/`up()` toggle it."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.requests = 0
        self.protocol_errors: list[str] = []
        self.lock = threading.Lock()

    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        raise NotImplementedError

    def start(self) -> ThreadedServer:
        self.thread.start()
        self.up()
        return self

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def up(self) -> None:
        async def go() -> None:
            self.server = await asyncio.start_server(self._conn, "127.0.0.1", self.port, reuse_address=True)

        self._call(go())

    def down(self) -> None:
        async def go() -> None:
            if self.server is not None:
                self.server.close()
                self.server = None
            for w in list(self.writers):
                w.transport.abort()
            self.writers.clear()

        self._call(go())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, version = lines[0].split(" ")
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if version != "HTTP/1.1" or "host" not in headers:
                    self.protocol_errors.append(f"bad request line or no Host: {lines[0]}")
                    status, body = 400, b'{"error":"bad request"}'
                elif "content-length" not in headers:
                    self.protocol_errors.append("no Content-Length")
                    status, body = 411, b'{"error":"length required"}'
                else:
                    data = await reader.readexactly(int(headers["content-length"]))
                    with self.lock:
                        self.requests += 1
                    status, body = await self.handle(method, path, headers, data)
                writer.write(
                    f"HTTP/1.1 {status} {REASONS.get(status, 'X')}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
