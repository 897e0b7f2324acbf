"""stdout: one line per event (JSON, or text with logging.format: text), for containers."""

from __future__ import annotations

import os

from apigate.logs.record import Record
from apigate.logs.sinks.base import Sink


class StdoutSink(Sink):
    kind = "stdout"
    uses_spool = False

    def __init__(self, name: str, min_level: int, text: bool = False, fd: int = 1) -> None:
        super().__init__(name, min_level, batch_size=256, flush_interval=0.05)
        self.text = text
        self.fd = fd

    async def send(self, batch: list[Record]) -> list[Record]:
        if self.text:
            data = b"".join((r.text or r.json) + b"\n" for r in batch)
        else:
            data = b"".join(r.json + b"\n" for r in batch)
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except BlockingIOError:
            pass  # a non-blocking stdout that is full: the rest of this batch is lost
        except (BrokenPipeError, OSError):
            self.stats.errors += 1
            return []
        self.delivered(len(batch))
        return []
