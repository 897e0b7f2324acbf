"""The built-in demo upstream: a tiny HTTP/1.1 JSON service for `make run` and for tests.

Endpoints:
  GET  /api/users        a JSON list of a few users
  GET  /api/users/{id}   one user, or 404 JSON
  ANY  /api/echo[/...]   JSON echo of what arrived: method, path, query, headers (as received, so
                         X-Forwarded-For, X-Request-ID ... added by the gateway are visible), body
                         length and SHA-256
  anything else          404 JSON (405 with Allow for a known path with another method)

Correct HTTP/1.1 on asyncio.Protocol + httptools: keep-alive (and HTTP/1.0 keep-alive when
asked), pipelined requests answered in order, request bodies framed by Content-Length or
chunked, `Expect: 100-continue`, HEAD, Content-Length framed responses, idle connections closed
after `idle_timeout` seconds. Bodies are counted and hashed, never stored.

Standalone: `python -m apigate.demo.upstream --port 8081`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import parse_qs

import httptools

__all__ = ["USERS", "DemoUpstream", "main", "start_demo_upstream"]

USERS: list[dict[str, Any]] = [
    {"id": 1, "name": "Ada Lovelace", "email": "ada@example.org", "role": "admin"},
    {"id": 2, "name": "Alan Turing", "email": "alan@example.org", "role": "user"},
    {"id": 3, "name": "Grace Hopper", "email": "grace@example.org", "role": "user"},
    {"id": 4, "name": "Edsger Dijkstra", "email": "edsger@example.org", "role": "user"},
]
_USERS_BY_ID = {str(u["id"]): u for u in USERS}

MAX_HEADER_BYTES = 64 * 1024
DEFAULT_IDLE_TIMEOUT = 75.0
SERVER_NAME = "apigate-demo-upstream"

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}
_READ_METHODS = "GET, HEAD"


class _HeadersTooLarge(Exception):
    pass


_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _json_body(obj: object) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _error(status: int, error: str, message: str) -> tuple[int, bytes, list[tuple[str, str]]]:
    return status, _json_body({"error": error, "message": message}), []


class _Request:
    __slots__ = ("body_length", "body_sha256", "header_bytes", "headers", "target")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[str, str]] = []
        self.header_bytes = 0
        self.body_length = 0
        self.body_sha256 = hashlib.sha256()


class _DemoProtocol(asyncio.Protocol):
    """One client connection. httptools calls the on_* methods while data_received feeds it."""

    def __init__(self, owner: DemoUpstream) -> None:
        self._owner = owner
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._req = _Request()
        self._closing = False
        self._idle: asyncio.TimerHandle | None = None
        self._peer: str = ""

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._owner._connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._connections.discard(self)
        self._cancel_idle()
        self._transport = None
        self._closing = True

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request before the upgrade was answered in on_message_complete; we do not
            # speak the other protocol, so the connection ends here.
            self.close()
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadersTooLarge) or isinstance(e.__cause__, _HeadersTooLarge):
                self._send_final(*_error(431, "headers_too_large", "request headers too large"))
            else:
                raise
        except _HeadersTooLarge:
            self._send_final(*_error(431, "headers_too_large", "request headers too large"))
        except httptools.HttpParserError as e:
            self._send_final(*_error(400, "bad_request", f"malformed HTTP request: {e}"))

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()

    # ------------------------------------------------------------------ httptools callbacks
    def on_message_begin(self) -> None:
        self._cancel_idle()
        self._req = _Request()

    def on_url(self, url: bytes) -> None:
        self._req.target += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        self._req.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for name, value in self._req.headers:
            if name.lower() == "expect" and value.strip().lower() == "100-continue":
                if self._parser.get_http_version() == "1.1" and self._transport is not None:
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                break

    def on_body(self, body: bytes) -> None:
        self._req.body_length += len(body)
        self._req.body_sha256.update(body)

    def on_message_complete(self) -> None:
        if self._closing or self._transport is None:
            return
        method = self._parser.get_method().decode("ascii", "replace")
        status, body, extra = self._handle(method, self._req)
        keep_alive = bool(self._parser.should_keep_alive()) and not self._parser.should_upgrade()
        self._write_response(status, body, extra, head=method == "HEAD", keep_alive=keep_alive)
        if keep_alive:
            self._arm_idle()
        else:
            self.close()

    # ------------------------------------------------------------------ application
    def _handle(self, method: str, req: _Request) -> tuple[int, bytes, list[tuple[str, str]]]:
        target = req.target.decode("latin-1")
        path, _, query = target.partition("?")
        query = query.partition("#")[0]
        if path == "/api/users":
            if method not in ("GET", "HEAD"):
                return self._not_allowed(method, path)
            return 200, _json_body(USERS), []
        if path.startswith("/api/users/") and "/" not in path[len("/api/users/") :]:
            if method not in ("GET", "HEAD"):
                return self._not_allowed(method, path)
            user_id = path[len("/api/users/") :]
            user = _USERS_BY_ID.get(user_id)
            if user is None:
                return _error(404, "not_found", f"no user with id '{user_id}'")
            return 200, _json_body(user), []
        if path == "/api/echo" or path.startswith("/api/echo/"):
            return 200, _json_body(self._echo(method, path, query, req)), []
        return _error(404, "not_found", f"no route for {method} {path}")

    @staticmethod
    def _not_allowed(method: str, path: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        status, body, _ = _error(405, "method_not_allowed", f"{method} is not allowed on {path}")
        return status, body, [("Allow", _READ_METHODS)]

    def _echo(self, method: str, path: str, query: str, req: _Request) -> dict[str, Any]:
        merged: dict[str, str] = {}
        for name, value in req.headers:
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return {
            "method": method,
            "path": path,
            "query": query,
            "args": parse_qs(query, keep_blank_values=True),
            "http_version": self._parser.get_http_version(),
            "headers": merged,
            "raw_headers": [f"{n}: {v}" for n, v in req.headers],
            "body_length": req.body_length,
            "body_sha256": req.body_sha256.hexdigest(),
            "client": self._peer,
        }

    # ------------------------------------------------------------------ plumbing
    def _count_header_bytes(self, n: int) -> None:
        self._req.header_bytes += n
        if self._req.header_bytes > MAX_HEADER_BYTES:
            raise _HeadersTooLarge

    def _write_response(
        self, status: int, body: bytes, extra: Sequence[tuple[str, str]], *, head: bool, keep_alive: bool
    ) -> None:
        if self._transport is None:
            return
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}".encode("ascii"),
            b"Date: " + _http_date(),
            b"Server: " + SERVER_NAME.encode("ascii"),
            b"Content-Type: application/json",
            b"Content-Length: " + str(len(body)).encode("ascii"),
        ]
        lines.extend(f"{n}: {v}".encode("latin-1") for n, v in extra)
        if not keep_alive:
            lines.append(b"Connection: close")
        elif self._parser.get_http_version() == "1.0":
            lines.append(b"Connection: keep-alive")
        head_bytes = b"\r\n".join(lines) + b"\r\n\r\n"
        self._transport.write(head_bytes if head else head_bytes + body)

    def _send_final(self, status: int, body: bytes, extra: list[tuple[str, str]]) -> None:
        self._write_response(status, body, extra, head=False, keep_alive=False)
        self.close()

    def close(self) -> None:
        self._closing = True
        self._cancel_idle()
        if self._transport is not None:
            self._transport.close()

    def _arm_idle(self) -> None:
        self._cancel_idle()
        timeout = self._owner.idle_timeout
        if timeout is not None and self._transport is not None:
            self._idle = asyncio.get_running_loop().call_later(timeout, self.close)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


class DemoUpstream:
    """The demo upstream as an object: `await start()`, `url`, `await stop()`.

    `port=0` picks a free port (read it back from `.port`). `stop()` closes the listener and
    every open connection.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 8081, *, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    ) -> None:
        self.host = host
        self.idle_timeout = idle_timeout
        self._requested_port = port
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_DemoProtocol] = set()

    @property
    def server(self) -> asyncio.AbstractServer:
        if self._server is None:
            raise RuntimeError("demo upstream is not started")
        return self._server

    @property
    def port(self) -> int:
        sockets = getattr(self.server, "sockets", None) or ()
        for sock in sockets:
            return int(sock.getsockname()[1])
        return self._requested_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _DemoProtocol(self), self.host, self._requested_port, reuse_address=True, backlog=1024
        )
        return self._server

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        self._connections.clear()

    async def __aenter__(self) -> DemoUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_demo_upstream(host: str = "127.0.0.1", port: int = 8081) -> asyncio.AbstractServer:
    """Start the demo upstream on host:port in the running loop and return its server.

    `server.close()` stops accepting; open keep-alive connections end with the process or after
    the idle timeout. Use `DemoUpstream` when you need `stop()` to close them too.
    """
    return await DemoUpstream(host, port).start()


async def _serve(host: str, port: int) -> None:
    upstream = DemoUpstream(host, port)
    await upstream.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"demo upstream listening on {upstream.url} (GET /api/users, /api/users/{{id}}, ANY /api/echo/...)")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await upstream.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m apigate.demo.upstream",
        description="apigate's demo upstream: /api/users, /api/users/{id}, /api/echo/... as JSON.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to bind (default: 8081)")
    args = parser.parse_args(argv)
    run: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    try:
        run(_serve(args.host, args.port))
    except OSError as e:
        print(f"demo upstream: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
