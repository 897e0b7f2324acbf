"""One health probe of an upstream target: a TCP (and TLS) connect, then `GET path`.

Used by the active health checks of balanced upstreams (gateway/balancer.py) and by the
readiness check of `check_upstreams` (telemetry/health.py). A fresh connection each time,
closed after the status line: a probe must see what a new request would see, not a pooled
connection that happens to be alive.
"""

from __future__ import annotations

import asyncio
import contextlib

from apigate.http.client import UpstreamPool

USER_AGENT = "apigate-health"


async def probe(pool: UpstreamPool, path: str | None) -> tuple[bool, str]:
    """(healthy, detail): 2xx or 3xx to `GET path` is healthy; with no path, connecting is.
    Raises OSError when the connection fails; the caller bounds the time."""
    reader, writer = await asyncio.open_connection(
        pool.host, pool.port, ssl=pool.ssl, server_hostname=pool.host if pool.ssl else None
    )
    try:
        if path is None:
            return True, "connected"
        host = pool.host_header.decode("ascii")
        writer.write(
            f"GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: {USER_AGENT}\r\n"
            "connection: close\r\n\r\n".encode("latin-1")
        )
        line = await reader.readline()
        fields = line.split(None, 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
            return False, f"GET {path}: not an HTTP response"
        status = int(fields[1])
        return 200 <= status < 400, f"GET {path}: {status}"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
