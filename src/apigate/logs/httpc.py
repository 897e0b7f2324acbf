"""A minimal HTTP/1.1 client on asyncio streams for the Elasticsearch and Splunk sinks.

One keep-alive connection per sink, used by its background task only (one request at a
time), so no pool is needed; responses are framed by Content-Length or chunked coding.
Everything has a timeout; any error closes the connection and surfaces as `HttpError`
so that the sink can back off. It runs on the event loop and never blocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
TIMEOUT_S = 10.0


class HttpError(Exception):
    """Connecting, sending or reading failed (no usable response)."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class HttpClient:
    def __init__(self, base_url: str, verify_tls: bool = True, timeout: float = TIMEOUT_S) -> None:
        u = urlsplit(base_url)
        self.scheme = u.scheme
        self.host = u.hostname or "localhost"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.base_path = u.path.rstrip("/")
        self.timeout = timeout
        self.ssl: ssl.SSLContext | None = None
        if u.scheme == "https":
            self.ssl = ssl.create_default_context()
            if not verify_tls:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def __repr__(self) -> str:
        return f"<HttpClient {self.scheme}://{self.host}:{self.port} open={self._writer is not None}>"

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Response:
        try:
            return await asyncio.wait_for(self._request(method, path, body, headers or {}), self.timeout)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            TimeoutError,
        ) as e:
            self.close()
            raise HttpError(f"{method} {self.host}:{self.port}{path}: {type(e).__name__} {e}") from e

    async def _request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Response:
        for attempt in (0, 1):
            fresh = self._writer is None
            if fresh:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
            assert self._reader is not None and self._writer is not None
            head = [f"{method} {self.base_path}{path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
            head += [f"{k}: {v}" for k, v in headers.items()]
            head.append(f"Content-Length: {len(body)}")
            self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            try:
                await self._writer.drain()
                return await self._read_response()
            except (ConnectionError, asyncio.IncompleteReadError):
                # A kept-alive connection the server closed meanwhile: once more on a new one.
                self.close()
                if fresh or attempt:
                    raise
        raise HttpError("unreachable")

    async def _read_response(self) -> Response:
        r = self._reader
        assert r is not None
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            size = 0
            while True:
                n = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
                if n == 0:
                    await r.readuntil(b"\r\n")
                    break
                size += n
                if size > MAX_RESPONSE_BYTES:
                    raise ValueError("response too large")
                parts.append(await r.readexactly(n))
                await r.readexactly(2)
            body = b"".join(parts)
        else:
            length = int(headers.get("content-length", "0"))
            if length > MAX_RESPONSE_BYTES:
                raise ValueError("response too large")
            body = await r.readexactly(length)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)

    def close(self) -> None:
        w = self._writer
        self._reader = self._writer = None
        if w is not None:
            with contextlib.suppress(Exception):
                w.close()
