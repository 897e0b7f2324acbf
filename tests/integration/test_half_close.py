"""A client that half-closes (shutdown(SHUT_WR)) after pipelining still gets every answer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from harness import GatewayFactory, ScriptedUpstream


def test_half_close_after_pipelined_requests_answers_them_all_in_order(
    gateway: GatewayFactory, scripted: Callable[..., ScriptedUpstream]
) -> None:
    async def handler(req, conn) -> bool:  # type: ignore[no-untyped-def]
        if req.path == "/slow":
            await asyncio.sleep(0.3)  # the EOF arrives while the first answer is pending
        await conn.respond(200, req.path.encode())
        return True

    gw = gateway({"up": scripted(handler).url})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(b"".join(f"GET /{p} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for p in ("slow", "b", "c")))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    heads = data.split(b"HTTP/1.1 ")[1:]
    assert [h[:3] for h in heads] == [b"200", b"200", b"200"]
    assert [h.rsplit(b"\r\n\r\n", 1)[1] for h in heads] == [b"/slow", b"/b", b"/c"]
    assert b"connection: close" in heads[2].lower() and b"connection: close" not in heads[0].lower()
