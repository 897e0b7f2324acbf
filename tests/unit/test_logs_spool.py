"""The disk spool under crashes: a kill at any step leaves at worst re-sends, never a skip.

Two kinds of test. The targeted ones stop the spool right after a segment file was deleted
(the step before the head is moved on) and reopen the directory, as the next start would.
The exhaustive ones run a spool in a forked child and SIGKILL it before its k-th file
operation (rename or delete), for every k: whatever was in a segment file on disk and not
yet delivered must be read back after the restart, in order.
"""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from apigate.logs.record import Record
from apigate.logs.spool import Spool


def rec(i: int) -> Record:
    return Record(f"e{i}", 1700000000.0 + i, 20, orjson.dumps({"n": i}))


def idx(r: Record) -> int:
    return int(r.eid[1:])


def small(directory: Path, max_bytes: int = 1 << 20) -> Spool:
    """A spool with ~256-byte segments (about 8 records each)."""
    sp = Spool(directory, max_bytes)
    sp.segment_bytes = 256
    return sp


def drain(sp: Spool) -> list[int]:
    out: list[int] = []
    while batch := sp.read(5):
        out += [idx(r) for r in batch]
        sp.commit()
    return out


def on_disk(directory: Path) -> list[int]:
    """Every complete record line in the segment files, oldest segment first."""
    out: list[int] = []
    for seg in sorted(directory.glob("*.spool")):
        data = seg.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].splitlines(keepends=True):
            out.append(idx(Record.from_spool_line(line)))
    return out


class Killed(BaseException):
    """The process died here (no cleanup in the spool runs: nothing catches BaseException)."""


@contextmanager
def killed_after_unlink(n: int = 1) -> Iterator[None]:
    """The n-th deletion happens, then the process "dies"."""
    real = os.unlink
    count = 0

    def unlink(path: str | os.PathLike[str], *a: object, **kw: object) -> None:
        nonlocal count
        real(path, *a, **kw)  # type: ignore[arg-type]
        if str(path).endswith(".spool"):
            count += 1
            if count == n:
                raise Killed

    os.unlink = unlink  # type: ignore[assignment]
    try:
        yield
    finally:
        os.unlink = real


def test_kill_after_a_consumed_segment_is_deleted_skips_nothing(tmp_path: Path) -> None:
    sp = small(tmp_path / "s")
    for i in range(0, 60, 3):
        sp.append([rec(i), rec(i + 1), rec(i + 2)])
    assert len(sp.segments) >= 3
    first = on_disk(tmp_path / "s")
    delivered: list[int] = []
    with killed_after_unlink(), pytest.raises(Killed):
        while True:
            batch = sp.read(5)
            delivered += [idx(r) for r in batch]
            sp.commit()  # the first segment is consumed: deleted, then the kill
    left = on_disk(tmp_path / "s")
    assert left and left[0] > 0 and left == first[first.index(left[0]) :]
    again = drain(small(tmp_path / "s"))
    assert again == left  # every line still on disk is read, from the first one
    assert sorted(set(delivered) | set(again)) == list(range(60))


def test_kill_after_the_bound_deleted_a_partly_read_segment_skips_nothing(tmp_path: Path) -> None:
    sp = small(tmp_path / "b", max_bytes=1024)
    for i in range(0, 24, 3):
        sp.append([rec(i), rec(i + 1), rec(i + 2)])
    assert [idx(r) for r in sp.read(3)] == [0, 1, 2]
    sp.commit()  # the head is now in the middle of the oldest segment
    i = 24
    with killed_after_unlink(), pytest.raises(Killed):
        while True:  # past the bound: the oldest segment goes, then the kill
            sp.append([rec(i), rec(i + 1), rec(i + 2)])
            i += 3
    left = on_disk(tmp_path / "b")
    assert left[0] > 3
    assert drain(small(tmp_path / "b", max_bytes=1024)) == left


def test_kill_after_the_last_segment_is_deleted_then_two_restarts(tmp_path: Path) -> None:
    """The spool empties, the kill comes before the head is reset; the next start spools
    new events (the sink is still down) and stops; the start after that reads them all.
    A segment number that was used before must not pick up the old head."""
    sp = small(tmp_path / "t")
    sp.append([rec(i) for i in range(10)])
    with killed_after_unlink(), pytest.raises(Killed):
        drain(sp)  # two batches: the first moves the head, the second empties the spool
    assert on_disk(tmp_path / "t") == []
    sp = small(tmp_path / "t")
    assert not sp and sp.read(10) == []
    sp.append([rec(i) for i in range(10, 17)])
    del sp  # SIGTERM while down: nothing committed
    assert drain(small(tmp_path / "t")) == list(range(10, 17))


def test_unreadable_head_re_sends_from_the_oldest_line(tmp_path: Path) -> None:
    sp = small(tmp_path / "h")
    sp.append([rec(i) for i in range(20)])
    sp.read(4)
    sp.commit()
    for junk in ("", "garbage", "12 x"):
        (tmp_path / "h" / "head.offset").write_text(junk)
        assert drain(Spool(tmp_path / "h", 1 << 20))[:1] in ([0], [4])
        assert on_disk(tmp_path / "h") == []
        sp = small(tmp_path / "h")
        sp.append([rec(i) for i in range(20)])
        sp.read(4)
        sp.commit()


def run_killed(body: Callable[[], None], ops_before_kill: int) -> bool:
    """Run `body` in a child that SIGKILLs itself instead of its `ops_before_kill`-th rename
    or delete. True when it was killed, False when it finished first."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            count = 0

            def hook(real: Callable[..., None]) -> Callable[..., None]:
                def op(*a: object, **kw: object) -> None:
                    nonlocal count
                    count += 1
                    if count == ops_before_kill:
                        os.kill(os.getpid(), signal.SIGKILL)
                    real(*a, **kw)

                return op

            os.replace = hook(os.replace)  # type: ignore[assignment]
            os.rename = hook(os.rename)  # type: ignore[assignment]
            os.unlink = hook(os.unlink)  # type: ignore[assignment]
            os.remove = hook(os.remove)  # type: ignore[assignment]
            body()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0
    return False


def sink_life(directory: Path, max_bytes: int, delivered_log: Path) -> Callable[[], None]:
    """Spool 90 events in small appends while delivering now and then, then drain; each
    delivered batch is logged before its commit, as a sink sends before it commits."""

    def body() -> None:
        sp = small(directory, max_bytes)
        with delivered_log.open("a") as log:

            def deliver(n: int) -> None:
                batch = sp.read(n)
                log.write("".join(f"{idx(r)}\n" for r in batch))
                log.flush()
                sp.commit()

            for i in range(0, 90, 3):
                sp.append([rec(i), rec(i + 1), rec(i + 2)])
                if i % 9 == 6:
                    deliver(4)
            while sp:
                deliver(5)

    return body


@pytest.mark.parametrize("max_bytes", [1 << 20, 700], ids=["unbounded", "bounded"])
def test_a_kill_at_any_step_loses_nothing_that_was_on_disk(tmp_path: Path, max_bytes: int) -> None:
    k = 0
    while True:
        k += 1
        d, log = tmp_path / f"k{k}", tmp_path / f"k{k}.delivered"
        if not run_killed(sink_life(d, max_bytes, log), k):
            assert k > 20  # it ran through every step
            return
        delivered = {int(x) for x in log.read_text().split()} if log.exists() else set()
        waiting = [i for i in on_disk(d) if i not in delivered]
        sp = small(d)  # the restart (a larger bound: no drops here); still down, it spools more
        assert sp.append([rec(i) for i in range(1000, 1003)]) == 0
        del sp
        again = drain(small(d))  # the start after that, the sink is back
        assert again == sorted(set(again)), f"kill before step {k}: out of order"
        missing = [i for i in [*waiting, 1000, 1001, 1002] if i not in again]
        assert not missing, f"kill before step {k}: lost {missing}"


def test_a_failed_write_leaves_no_half_line_in_front_of_the_next(tmp_path: Path) -> None:
    """A full disk (here: RLIMIT_FSIZE) fails an append halfway; the sink keeps those
    events in memory. The next append must not be glued to the half line."""
    d = tmp_path / "f"

    def body() -> None:
        sp = small(d)
        sp.segment_bytes = 1 << 20
        sp.append([rec(i) for i in range(3)])
        size = sum(p.stat().st_size for p in d.glob("*.spool"))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))
        try:
            sp.append([rec(i) for i in range(3, 6)])
        except OSError:
            pass
        else:
            raise AssertionError("the write did not fail")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        sp.append([rec(i) for i in range(3, 9)])  # the sink spools them again, and more

    assert not run_killed(body, 10**9)
    assert drain(small(d)) == list(range(9))
