"""Real RequestCycle and RequestContext objects for filter unit tests, without sockets.

Compiled (mypyc), the data plane checks the types it is handed, so filters are tested on
the listener's own objects rather than look-alikes. `limits()` and `serve()` build the
listener itself on a fake transport, for the protocol's own tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from transports import FakeTransport

from apigate.gateway.filters import RequestContext
from apigate.http.server import Handler, HttpServerProtocol, Limits, RequestCycle, ServerState


def limits(**changes: Any) -> Limits:
    """The tests' listener limits, with `changes` (Limits' keyword arguments) applied."""
    values: dict[str, Any] = {
        "max_connections": 10,
        "idle_timeout": 60,
        "request_timeout": 30,
        "max_header_bytes": 65536,
        "max_body_bytes": 0,
    }
    values.update(changes)
    return Limits(**values)


LIMITS = limits()


def serve(
    handler: Handler, state: ServerState | None = None, peer: tuple[str, int] | str = ("127.0.0.1", 50000)
) -> tuple[HttpServerProtocol, FakeTransport]:
    """A client connection accepted by the listener (inside a running loop), as the
    server's protocol factory makes it: the protocol and the transport it writes to."""
    proto = HttpServerProtocol(handler, state if state is not None else ServerState(LIMITS))
    transport = FakeTransport(peer)
    transport.attach(proto)
    return proto, transport


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
