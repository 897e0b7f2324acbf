"""The disk spool of one sink: events it could not deliver yet, oldest first.

Append-only segment files (`<seq>.spool`, one event per line) plus `head.offset`, the
byte offset of the first undelivered line in the oldest segment. Reading never removes:
`commit()` after a successful delivery advances the offset and deletes consumed
segments, so a crash or restart between sending and committing re-sends (Elasticsearch
ignores the re-send by `_id`) and never loses. A new process opening the same directory
continues where the last one stopped; a torn last line (killed mid-write) is cut off.

Bound: beyond `max_bytes` the oldest whole segments are deleted and their events counted
as dropped (`spool_full`), Kong's drop-oldest queue on disk.

File I/O here is synchronous: it runs in the sink's background task in chunks of at
most a segment, on the page cache; never on the request path.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from apigate.logs.record import Record

SEGMENT_BYTES = 1024 * 1024


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(SEGMENT_BYTES, max_bytes // 8))
        directory.mkdir(parents=True, exist_ok=True)
        self._offset_file = directory / "head.offset"
        self.segments: list[int] = sorted(int(p.stem) for p in directory.glob("*.spool") if p.stem.isdigit())
        self.sizes: dict[int, int] = {}
        for seq in self.segments:
            self.sizes[seq] = self._repair(self._path(seq))
        self.head_offset = 0
        try:
            self.head_offset = int(self._offset_file.read_text() or 0)
        except (OSError, ValueError):
            self.head_offset = 0
        if not self.segments or self.head_offset > self.sizes[self.segments[0]]:
            self.head_offset = 0
        self._pending: tuple[int, int] | None = None  # (segment, offset after the last read)
        self._drop_empty_head()

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}.spool"

    @staticmethod
    def _repair(path: Path) -> int:
        """Cut a torn last line; returns the size."""
        with path.open("rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                f.truncate(end)
        return end

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values()) - self.head_offset

    def __bool__(self) -> bool:
        return self.bytes > 0

    def __repr__(self) -> str:
        return f"<Spool {self.dir} segments={len(self.segments)} bytes={self.bytes}>"

    def append(self, records: list[Record]) -> int:
        """Write records at the tail; returns how many of the oldest were dropped for the bound."""
        if not records:
            return 0
        data = b"".join(r.spool_line() for r in records)
        seq = self.segments[-1] if self.segments else 0
        if not self.segments or self.sizes[seq] >= self.segment_bytes:
            seq += 1
            self.segments.append(seq)
            self.sizes[seq] = 0
        with self._path(seq).open("ab") as f:
            f.write(data)
        self.sizes[seq] += len(data)
        return self._enforce_bound()

    def _enforce_bound(self) -> int:
        dropped = 0
        while self.bytes > self.max_bytes and len(self.segments) > 1:
            seq = self.segments.pop(0)
            path = self._path(seq)
            with path.open("rb") as f:
                f.seek(self.head_offset)
                dropped += f.read().count(b"\n")
            path.unlink(missing_ok=True)
            del self.sizes[seq]
            self.head_offset = 0
            self._pending = None
            self._save_offset()
        return dropped

    def read(self, limit: int) -> list[Record]:
        """Up to `limit` records from the head, not yet removed (see `commit`)."""
        self._drop_empty_head()
        if not self.segments:
            return []
        seq = self.segments[0]
        out: list[Record] = []
        with self._path(seq).open("rb") as f:
            f.seek(self.head_offset)
            pos = self.head_offset
            for line in f:
                if not line.endswith(b"\n"):
                    break
                # A damaged line is skipped, not allowed to block the spool.
                with contextlib.suppress(ValueError):
                    out.append(Record.from_spool_line(line))
                pos += len(line)
                if len(out) >= limit:
                    break
        self._pending = (seq, pos)
        return out

    def commit(self) -> None:
        """The records of the last `read` were delivered: move past them."""
        if self._pending is None:
            return
        seq, pos = self._pending
        self._pending = None
        if not self.segments or self.segments[0] != seq:
            return
        self.head_offset = pos
        self._drop_empty_head()
        self._save_offset()

    def _drop_empty_head(self) -> None:
        while self.segments and self.head_offset >= self.sizes[self.segments[0]]:
            if len(self.segments) == 1 and self.sizes[self.segments[0]] < self.segment_bytes:
                if self.head_offset and self.head_offset >= self.sizes[self.segments[0]]:
                    # Fully consumed tail: start over with an empty directory.
                    seq = self.segments.pop()
                    self._path(seq).unlink(missing_ok=True)
                    del self.sizes[seq]
                    self.head_offset = 0
                    self._save_offset()
                return
            seq = self.segments.pop(0)
            self._path(seq).unlink(missing_ok=True)
            del self.sizes[seq]
            self.head_offset = 0
            self._save_offset()

    def _save_offset(self) -> None:
        tmp = self._offset_file.with_suffix(".tmp")
        tmp.write_text(str(self.head_offset))
        os.replace(tmp, self._offset_file)
