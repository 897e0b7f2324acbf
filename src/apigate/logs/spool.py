"""The disk spool of one sink: events it could not deliver yet, oldest first.

Append-only segment files (`<seq>.spool`, one event per line) plus `head.offset`, the
head: "<seq> <offset>", the byte offset of the first undelivered line in segment `<seq>`.
Reading never removes: `commit()` after a successful delivery advances the head and
deletes consumed segments, so a crash or restart between sending and committing re-sends
(Elasticsearch ignores the re-send by `_id`) and never loses. A new process opening the
same directory continues where the last one stopped; a torn last line (killed mid-write)
is cut off.

Crash safety (a kill, SIGKILL or power loss, at any step re-sends at worst, never skips):
- the head is replaced atomically (temp file + `os.replace`, fsynced when it moves to
  another segment) and names its segment; its offset is applied only to that segment;
- a segment is deleted before the head moves past it: a kill in between leaves a head
  naming a segment that is gone, which the next start ignores (the oldest segment is
  read from its first line); the opposite outcome after a power loss (head moved, old
  segment still there) re-sends that segment;
- segment numbers are never reused (not even when the spool empties), so an old head can
  never name a new segment;
- an append that fails halfway (disk full) is cut back, so no half line is left in front
  of the next one.
Appends are not fsynced: a power loss can lose what was spooled in the last seconds (a
process kill cannot), but never anything behind it.

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
HEAD_FILE = "head.offset"


def _append_whole(path: Path, data: bytes) -> None:
    """Append `data` whole, or cut the file back to where it ended and raise."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(4096, min(SEGMENT_BYTES, max_bytes // 8))
        directory.mkdir(parents=True, exist_ok=True)
        self._head_file = directory / HEAD_FILE
        self.segments: list[int] = sorted(int(p.stem) for p in directory.glob("*.spool") if p.stem.isdigit())
        self.sizes: dict[int, int] = {}
        for seq in self.segments:
            self.sizes[seq] = self._repair(self._path(seq))
        head = self._load_head()
        self.head_offset = 0
        if head is not None and self.segments and head[0] == self.segments[0]:
            # Anything else (a segment that is gone, an unreadable head) starts at the
            # first line of the oldest segment: a re-send, not a skip.
            self.head_offset = head[1] if self._at_line_start(head[0], head[1]) else 0
        # Never reuse a number: an old head must not name a new segment.
        self._next_seq = max([*self.segments, head[0] if head else 0]) + 1
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

    def _load_head(self) -> tuple[int, int] | None:
        try:
            parts = self._head_file.read_text().split()
        except (OSError, UnicodeDecodeError):
            return None
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
            return None  # missing, torn, or the old bare-offset format
        return int(parts[0]), int(parts[1])

    def _at_line_start(self, seq: int, offset: int) -> bool:
        if offset == 0:
            return True
        if offset > self.sizes[seq]:
            return False
        with self._path(seq).open("rb") as f:
            f.seek(offset - 1)
            return f.read(1) == b"\n"

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
        new = not self.segments or self.sizes[self.segments[-1]] >= self.segment_bytes
        if new:
            seq = self._next_seq
            self._next_seq += 1
            self.segments.append(seq)
            self.sizes[seq] = 0
        seq = self.segments[-1]
        try:
            _append_whole(self._path(seq), data)
        except OSError:
            if new:
                self.segments.pop()
                del self.sizes[seq]
                with contextlib.suppress(OSError):
                    self._path(seq).unlink(missing_ok=True)
            raise
        self.sizes[seq] += len(data)
        return self._enforce_bound()

    def _enforce_bound(self) -> int:
        dropped = 0
        while self.bytes > self.max_bytes and len(self.segments) > 1:
            with self._path(self.segments[0]).open("rb") as f:
                f.seek(self.head_offset)
                dropped += f.read().count(b"\n")
            self._drop_head_segment()
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
        if not self._drop_empty_head():
            self._save_head()

    def _drop_empty_head(self) -> bool:
        """Delete consumed segments from the head; an empty, unread last one stays (the
        next append goes there). True when one was deleted (the head was saved)."""
        dropped = False
        while self.segments and self.head_offset >= self.sizes[self.segments[0]]:
            if self.head_offset == 0 and len(self.segments) == 1:
                break
            self._drop_head_segment()
            dropped = True
        return dropped

    def _drop_head_segment(self) -> None:
        # Delete first, then move the head: a kill in between leaves a head naming a
        # segment that is gone, which `__init__` ignores.
        seq = self.segments.pop(0)
        del self.sizes[seq]
        self._pending = None
        self._path(seq).unlink(missing_ok=True)
        self.head_offset = 0
        self._save_head(durable=True)

    def _save_head(self, durable: bool = False) -> None:
        """Replace `head.offset` atomically. Within a segment a lost update (power loss)
        only re-sends; when the head moves to another segment it is fsynced."""
        seq = self.segments[0] if self.segments else self._next_seq
        tmp = self.dir / (HEAD_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"%d %d\n" % (seq, self.head_offset))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._head_file)
