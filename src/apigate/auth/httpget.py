"""A minimal HTTP/1.1 GET over asyncio streams, for fetching a JWKS document.

The gateway's upstream pool is built for streaming proxied responses through callbacks;
a JWKS fetch is one small JSON document every few minutes, so a plain
`asyncio.open_connection` with `Connection: close` is the simplest correct client, and
it keeps aiohttp/httpx out of the runtime. The body is framed by Content-Length or
chunked encoding (or the end of the stream), so a server that keeps the connection open
is fine. Bounded in time (`timeout`) and size (`max_bytes`); no redirects are followed
(a JWKS URL is configured, not discovered).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

MAX_JWKS_BYTES = 1024 * 1024
MAX_HEAD_BYTES = 16384  # status line and headers of the answer


class FetchError(Exception):
    """The document could not be fetched; the message says why (no secrets in it)."""


async def http_get(url: str, timeout: float, max_bytes: int = MAX_JWKS_BYTES) -> bytes:
    """The body of a 200 answer to GET url, or FetchError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"not an http(s) URL: {url}")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise FetchError(f"bad port in {url}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    host = shown if parts.port is None else f"{shown}:{parts.port}"
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
        "User-Agent: apigate\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    try:
        async with asyncio.timeout(timeout):
            sslctx = ssl.create_default_context() if tls else None
            reader, writer = await asyncio.open_connection(
                parts.hostname, port, ssl=sslctx, limit=MAX_HEAD_BYTES
            )
            try:
                writer.write(request)
                return await _read_response(reader, max_bytes)
            finally:
                writer.close()
    except TimeoutError:
        raise FetchError(f"no answer from {parts.hostname}:{port} within {timeout:g}s") from None
    except (OSError, ssl.SSLError) as e:
        raise FetchError(f"{parts.hostname}:{port}: {e.strerror or e}") from None


async def _read_response(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    """The body of a 200 response, framed by Content-Length, chunked, or the end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise FetchError("incomplete HTTP answer") from None
    except asyncio.LimitOverrunError:
        raise FetchError("HTTP answer head too large") from None
    lines = head[:-4].split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise FetchError("not an HTTP answer")
    if int(status[1]) != 200:
        raise FetchError(f"HTTP status {int(status[1])}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    try:
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            return await _read_chunked(reader, max_bytes)
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise FetchError("bad Content-Length")
            if int(length) > max_bytes:
                raise FetchError(f"answer larger than {max_bytes} bytes")
            return await reader.readexactly(int(length))
        body = b""
        while len(body) <= max_bytes and (chunk := await reader.read(65536)):
            body += chunk
    except asyncio.IncompleteReadError:
        raise FetchError("body shorter than announced") from None
    if len(body) > max_bytes:
        raise FetchError(f"answer larger than {max_bytes} bytes")
    return body


async def _read_chunked(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            raise FetchError("broken chunked body") from None
        if size == 0:
            return bytes(out)
        if len(out) + size > max_bytes:
            raise FetchError(f"answer larger than {max_bytes} bytes")
        out += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise FetchError("broken chunked body")
