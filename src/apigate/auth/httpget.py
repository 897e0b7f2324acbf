"""A minimal HTTP/1.1 GET over asyncio streams, for fetching a JWKS document.

The gateway's upstream pool is built for streaming proxied responses through callbacks;
a JWKS fetch is one small JSON document every few minutes, so a plain
`asyncio.open_connection` with `Connection: close` is the simplest correct client, and
it keeps aiohttp/httpx out of the runtime. Bounded in time (`timeout`) and size
(`max_bytes`); no redirects are followed (a JWKS URL is configured, not discovered).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

MAX_JWKS_BYTES = 1024 * 1024


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
            reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=sslctx)
            try:
                writer.write(request)
                data = await _read_all(reader, max_bytes)
            finally:
                writer.close()
    except TimeoutError:
        raise FetchError(f"no answer from {parts.hostname}:{port} within {timeout:g}s") from None
    except (OSError, ssl.SSLError) as e:
        raise FetchError(f"{parts.hostname}:{port}: {e.strerror or e}") from None
    body = _parse(data)
    if len(body) > max_bytes:
        raise FetchError(f"answer larger than {max_bytes} bytes")
    return body


async def _read_all(reader: asyncio.StreamReader, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    limit = max_bytes + 16384  # room for the head
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > limit:
            raise FetchError(f"answer larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(data: bytes) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise FetchError("incomplete HTTP answer")
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise FetchError("not an HTTP answer")
    code = int(status[1])
    if code != 200:
        raise FetchError(f"HTTP status {code}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return _dechunk(body)
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise FetchError("body shorter than its Content-Length")
        return body[: int(length)]
    return body


def _dechunk(body: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            raise FetchError("broken chunked body")
        try:
            size = int(body[pos:end].split(b";")[0], 16)
        except ValueError:
            raise FetchError("broken chunked body") from None
        if size == 0:
            return b"".join(out)
        start = end + 2
        if start + size + 2 > len(body):
            raise FetchError("broken chunked body")
        out.append(body[start : start + size])
        pos = start + size + 2
