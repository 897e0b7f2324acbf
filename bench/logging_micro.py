"""Per-event cost of the log pipeline, off the request path: timestamp, event_id,
redaction, JSON encoding and the file sink's write, for a typical access event.

    .venv/bin/python bench/logging_micro.py [N]

A budget check for issue 6's benchmark (logging on >= 0.8 x logging off): at ~10k req/s
per worker, the whole pipeline may cost ~20 us per event.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from apigate.logs.pipeline import Pipeline
from apigate.logs.redact import AccessEvent
from apigate.logs.sinks.file import FileSink


def access_event(i: int) -> dict[str, object]:
    return {
        "timestamp": time.time(),
        "level": "INFO",
        "service": "api-gateway",
        "component": "gateway",
        "event_type": "request_completed",
        "correlation_id": f"3f1c2a9e-1b2c-4d5e-8f90-{i:012x}",
        "message": "Request completed",
        "method": "GET",
        "path": "/api/users",
        "client_ip": "127.0.0.1",
        "user_agent": "wrk",
        "request_size": 0,
        "status": 200,
        "duration_ms": 0.412,
        "route_id": "users",
        "upstream_id": "bench-upstream",
        "upstream_duration_ms": 0.301,
        "response_size": 52,
    }


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        sink = FileSink("file", 20, Path(d) / "gw.log", max_size_mb=4096)
        await sink.open()
        p = Pipeline(sinks=[sink])
        events = [AccessEvent(access_event(i)) for i in range(n)]
        t0 = time.perf_counter()
        for ev in events:
            p.submit(ev)
        t1 = time.perf_counter()
        p.pump()
        t2 = time.perf_counter()
        while sink.queue:
            await sink.send(sink._take(512))
        t3 = time.perf_counter()
        await sink.close_backend()
        print(
            f"{n} events: submit {(t1 - t0) / n * 1e6:.2f} us,"
            f" pump (redact+encode) {(t2 - t1) / n * 1e6:.2f} us,"
            f" file write {(t3 - t2) / n * 1e6:.2f} us per event"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
