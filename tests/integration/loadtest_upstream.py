"""A keep-alive test upstream for the load tester, in its own process (so SIGSTOP freezes it).

`python loadtest_upstream.py --port N` answers GET requests by path:
  /status/CODE   CODE with a short JSON body (e.g. /status/500)
  /never         reads the request and never answers (a timeout for the client)
  anything else  200 with a short JSON body
Requests must not have bodies (the load tests send GETs). Connections stay open.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

BODY = b'{"ok":true}'


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1]
            if path == b"/never":
                continue
            status = int(path.rsplit(b"/", 1)[1]) if path.startswith(b"/status/") else 200
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (status, len(BODY), BODY)
            )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await loop.create_server(Upstream, "127.0.0.1", port, backlog=1024)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))
