"""Real RequestCycle and RequestContext objects for filter unit tests, without sockets.

Compiled (mypyc), the data plane checks the types it is handed, so filters are tested on
the listener's own objects rather than look-alikes.
"""

from __future__ import annotations

import asyncio

from apigate.gateway.filters import RequestContext
from apigate.http.server import HttpServerProtocol, Limits, RequestCycle, ServerState

LIMITS = Limits(
    max_connections=10, idle_timeout=60, request_timeout=30, max_header_bytes=65536, max_body_bytes=0
)


def _protocol(client: str) -> HttpServerProtocol:
    async def make() -> HttpServerProtocol:  # the protocol reads the running loop
        return HttpServerProtocol(lambda cycle: None, ServerState(LIMITS))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        proto = asyncio.run(make())
    else:
        proto = HttpServerProtocol(lambda cycle: None, ServerState(LIMITS))
    proto.client_ip = client
    return proto


def request_cycle(
    headers: list[tuple[bytes, bytes]] | None = None, *, method: str = "GET", client: str = "127.0.0.1"
) -> RequestCycle:
    return RequestCycle(_protocol(client), method, b"/", headers or [], "1.1", True, None, None, 0.0)


def request_context(
    path: str = "/",
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    client: str = "127.0.0.1",
    start: float = 0.0,
) -> RequestContext:
    return RequestContext(request_cycle(headers, client=client), path, b"", start)
