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
from apigate.logs.sinks.file import FileSink


class _Filter:
    service = "api-gateway"


def snapshot(i: int) -> tuple[object, ...]:
    """What the access filter's on_complete hands the pipeline for one request."""
    loop_now = time.monotonic()
    return (
        _Filter(), loop_now, loop_now - 0.0004, 20, 200, f"3f1c2a9e-1b2c-4d5e-8f90-{i:012x}", "GET",
        "/api/users", b"", "127.0.0.1", [(b"host", b"x"), (b"user-agent", b"wrk")], None, "users",
        "bench-upstream", 0.0003, 52, None, None,
    )  # fmt: skip


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        sink = FileSink("file", 20, Path(d) / "gw.log", max_size_mb=4096)
        await sink.open()
        p = Pipeline(sinks=[sink])
        snaps = [snapshot(i) for i in range(n)]
        t0 = time.perf_counter()
        for snap in snaps:
            p.submit_access(snap)  # type: ignore[arg-type]
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
