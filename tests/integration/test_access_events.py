"""Every request ends with its access event (`request_completed`), including the ones the
listener ends itself: an upstream that is too slow (504), a client that is too slow (408)
and a client that leaves before its answer (499)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from harness import Conn, GatewayFactory, RawConn, ScriptedUpstream, UpRequest, wait_until


async def slow(req: UpRequest, conn: Conn) -> bool:
    if req.path.startswith("/slow"):
        await asyncio.sleep(3)
    await conn.respond(200, b"ok")
    return True


def access_events(stdout: str) -> dict[str, dict[str, Any]]:
    out = {}
    for line in stdout.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event_type") == "request_completed":
            out[ev.get("correlation_id")] = ev
    return out


@pytest.mark.parametrize("pooled", [False, True], ids=["new-connection", "pooled-connection"])
def test_requests_the_listener_ends_are_logged(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream], pooled: bool
) -> None:
    up = scripted(slow)
    gw = gateway(
        {"up": {"base_url": up.url, "timeout_secs": 0.5}},
        server={"request_timeout_secs": 1.5},
    )

    def warm(c: RawConn) -> None:
        if pooled:  # leaves an idle upstream connection: the gateway's task-free fast path
            c.request("GET", "/warm")
            assert c.read_response().status == 200

    with RawConn(gw.port) as c:
        warm(c)
        c.request("GET", "/slow/upstream", {"X-Request-ID": "ev-504"})
        assert c.read_response().status == 504
    with RawConn(gw.port) as c:
        warm(c)
        c.send(
            b"POST /slow-client HTTP/1.1\r\nHost: t\r\nX-Request-ID: ev-408\r\nContent-Length: 10\r\n\r\nab"
        )
        assert c.read_response().status == 408
    with RawConn(gw.port) as c:
        warm(c)
        n = len(up.requests_to("/slow/gone"))
        c.request("GET", "/slow/gone", {"X-Request-ID": "ev-499"})
        assert wait_until(lambda: len(up.requests_to("/slow/gone")) > n, 5)
        # Gone for good (RST): a FIN alone would be a half-close, still owed its answer.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)  # the gateway notices the client left
    assert gw.stop() == 0  # flushes the log pipeline
    events = access_events(gw.stdout())
    assert events.get("ev-504", {}).get("status") == 504, sorted(events)
    assert events.get("ev-408", {}).get("status") == 408, sorted(events)
    assert events.get("ev-499", {}).get("status") == 499, sorted(events)
