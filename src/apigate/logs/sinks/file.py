"""file: append lines to a file, rotated by size, with gzip and retention by count and age.

Lines are written whole: a batch is split at line boundaries, so a rotation happens
between two lines, never inside one, and nothing is lost across it (the file is renamed
then reopened; the writer is the only one). Rotated files are named
`<path>.<UTC timestamp>` (then `.gz`), so their names sort by age; compression and
cleanup run in a thread, off the event loop.

One writer per file: with `server.workers > 1`, worker i writes `<path>.<i>` (pipeline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import time
from pathlib import Path

from apigate.logs.record import Record
from apigate.logs.sinks.base import Sink

MiB = 1024 * 1024


def rotate_name(path: Path, now: float) -> Path:
    """`<path>.<UTC yyyymmddTHHMMSSmmm>`; taken names move 1 ms on, so names sort by age."""
    ms = int(now * 1000)
    while True:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f"{ms % 1000:03d}"
        candidate = path.with_name(f"{path.name}.{stamp}")
        if not candidate.exists() and not candidate.with_name(candidate.name + ".gz").exists():
            return candidate
        ms += 1


def backups(path: Path) -> list[Path]:
    prefix = path.name + "."
    found = [p for p in path.parent.glob(prefix + "*") if p.name[len(prefix) :][:1].isdigit()]
    return sorted(found, key=lambda p: p.name)


def compress_and_prune(
    path: Path, rotated: Path | None, compress: bool, max_backups: int, max_age_days: float
) -> None:
    """gzip the file just rotated, then delete backups beyond the count and the age."""
    if rotated is not None and compress and rotated.exists():
        gz = rotated.with_name(rotated.name + ".gz")
        with rotated.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        rotated.unlink()
    old = backups(path)
    if max_backups >= 0 and len(old) > max_backups:
        for p in old[: len(old) - max_backups]:
            p.unlink(missing_ok=True)
        old = old[len(old) - max_backups :]
    if max_age_days > 0:
        limit = time.time() - max_age_days * 86400
        for p in old:
            try:
                if p.stat().st_mtime < limit:
                    p.unlink()
            except FileNotFoundError:
                pass


class FileSink(Sink):
    kind = "file"
    uses_spool = False

    def __init__(
        self,
        name: str,
        min_level: int,
        path: Path,
        text: bool = False,
        rotation: bool = True,
        max_size_mb: float = 100,
        max_backups: int = 10,
        max_age_days: float = 30,
        compress: bool = True,
    ) -> None:
        super().__init__(name, min_level, batch_size=512, flush_interval=0.2)
        self.path = path
        self.text = text
        self.rotation = rotation
        self.max_bytes = max(1, int(max_size_mb * MiB))
        self.max_backups = max_backups
        self.max_age_days = max_age_days
        self.compress = compress
        self.fd = -1
        self.size = 0
        self._housekeeping: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.size = os.fstat(self.fd).st_size

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    async def send(self, batch: list[Record]) -> list[Record]:
        lines = [(r.text or r.json) + b"\n" for r in batch] if self.text else [r.json + b"\n" for r in batch]
        try:
            if not self.rotation:
                self._write_all(b"".join(lines))
            else:
                start = 0
                room = self.max_bytes - self.size
                acc = 0
                for i, line in enumerate(lines):
                    if acc + len(line) > room and (i > start or self.size > 0):
                        self._write_all(b"".join(lines[start:i]))
                        self._rotate()
                        start, acc, room = i, 0, self.max_bytes
                    acc += len(line)
                self._write_all(b"".join(lines[start:]))
        except OSError as e:
            self.stats.errors += 1
            raise OSError(f"cannot write {self.path}: {e}") from e
        self.delivered(len(batch))
        return []

    def _rotate(self) -> None:
        os.close(self.fd)
        rotated = rotate_name(self.path, time.time())
        os.rename(self.path, rotated)
        self._open()
        # One housekeeping job at a time, in rotation order (a batch may rotate twice).
        self._housekeeping = asyncio.get_running_loop().create_task(
            self._housekeep(self._housekeeping, rotated)
        )

    async def _housekeep(self, previous: asyncio.Task[None] | None, rotated: Path) -> None:
        if previous is not None:
            with contextlib.suppress(Exception):
                await previous
        try:
            await asyncio.to_thread(
                compress_and_prune, self.path, rotated, self.compress, self.max_backups, self.max_age_days
            )
        except OSError:
            self.stats.errors += 1

    async def close_backend(self) -> None:
        if self._housekeeping is not None:
            with contextlib.suppress(OSError):
                await self._housekeeping
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
