"""Pipeline, queue, spool and file sink, driven on a real event loop without sockets."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import re
import time
from pathlib import Path

import orjson
import pytest

from apigate.logs import names
from apigate.logs.pipeline import Pipeline, rfc3339
from apigate.logs.record import Record
from apigate.logs.sinks.base import Sink, SinkUnavailable
from apigate.logs.sinks.file import FileSink
from apigate.logs.spool import Spool
from apigate.telemetry import names as metric_names


class MemorySink(Sink):
    """A sink that can be switched down; records what it delivered, in order."""

    kind = "memory"

    def __init__(self, min_level: int = 20) -> None:
        super().__init__("memory", min_level, batch_size=10, flush_interval=0.01)
        self.up = True
        self.got: list[str] = []
        self.records: list[Record] = []

    async def send(self, batch: list[Record]) -> list[Record]:
        if not self.up:
            raise SinkUnavailable("down")
        self.got.extend(r.eid for r in batch)
        self.records.extend(batch)
        self.delivered(len(batch))
        return []


def rec(i: int) -> Record:
    return Record(f"e{i}", 1700000000.0 + i, 20, orjson.dumps({"n": i}))


def test_rfc3339_has_milliseconds_and_z() -> None:
    assert rfc3339(1710506096.789) == "2024-03-15T12:34:56.789Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rfc3339(time.time()))


def test_events_are_redacted_encoded_and_levelled() -> None:
    async def scenario() -> None:
        info, error = MemorySink(20), MemorySink(40)
        p = Pipeline(sinks=[info, error])
        await p.start()
        p.submit(p.event("INFO", "gateway", "request_completed", "Request completed", path="/a?token=x"))
        p.submit(p.event("ERROR", "logs", "sink_down", "down"))
        p.submit(p.event("DEBUG", "x", "y", "dropped by logging.level"))
        await asyncio.sleep(0.1)
        await p.close(1)
        assert len(info.got) == 2 and len(error.got) == 1
        first = orjson.loads(info.records[0].json)
        assert first["path"] == "/a?token=[REDACTED]" and first["event_id"] == info.got[0]
        assert orjson.loads(error.records[0].json)["event_type"] == "sink_down"

    asyncio.run(scenario())


def test_a_burst_is_pumped_in_slices_between_requests_and_nothing_is_lost() -> None:
    """A burst of events must not hold the loop for the whole burst (the requests waiting
    meanwhile would carry that stall in their latency), nor outgrow the intake."""
    from apigate.logs.pipeline import PUMP_SLICE

    async def scenario() -> None:
        sink = MemorySink(20)
        sink.queue_max = 100_000  # this test is about the intake, not the sink's queue
        p = Pipeline(sinks=[sink])
        await p.start()
        burst = 8 * PUMP_SLICE * 4
        for i in range(burst):
            p.submit(p.event("INFO", "gateway", "request_completed", "Request completed", n=i))
        backlog = [len(p.intake)]
        while p.intake:
            await asyncio.sleep(0)  # one turn of the loop: a request would be served here
            backlog.append(len(p.intake))
        await p.close(1)
        taken = [a - b for a, b in itertools.pairwise(backlog) if a != b]
        assert len(taken) > 3, f"the burst went in {len(taken)} turns"
        assert max(taken) <= max(PUMP_SLICE, burst // 4)
        assert p.intake_dropped == 0 and len(sink.got) == burst

    asyncio.run(scenario())


def test_record_shape() -> None:
    p = Pipeline(service="svc")
    r = p.process(p.event("INFO", "gateway", "t", "m", password="p", email="x@y.org"))
    assert r is not None
    ev = orjson.loads(r.json)
    assert ev["service"] == "svc" and ev["password"] == "[REDACTED]" and ev["email"] == "x***@y.org"
    assert ev["event_id"] == r.eid and ev["timestamp"].endswith("Z")


def test_queue_is_bounded_drops_oldest_and_counts() -> None:
    s = MemorySink()
    s.queue_max = 5
    for i in range(8):
        s.offer(rec(i))
    assert [r.eid for r in s.queue] == ["e3", "e4", "e5", "e6", "e7"]
    assert s.stats.dropped[names.DROP_QUEUE_FULL] == 3


class GatedSink(MemorySink):
    """A MemorySink whose sends wait for `gate`: a slow open or a send stuck until its timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, batch: list[Record]) -> list[Record]:
        await self.gate.wait()
        return await super().send(batch)


async def received(s: MemorySink, n: int) -> None:
    """Wait up to 10 s for `n` events, close the sink, and check they came once, in order."""
    for _ in range(200):
        if len(s.got) >= n:
            break
        await asyncio.sleep(0.05)
    await s.close(1)
    assert s.got == [f"e{i}" for i in range(n)]


def test_full_queue_moves_to_the_spool_while_a_send_is_stuck(tmp_path: Path) -> None:
    """The queue bound is not a loss while the sink has a spool, whatever its task is
    doing; the batch that was out when the queue overflowed, failing, is still sent first."""

    async def scenario() -> None:
        s = GatedSink()
        s.queue_max = 20
        s.attach_spool(tmp_path / "spool", 1 << 20)
        s.start()
        for i in range(10):
            s.offer(rec(i))
        await asyncio.sleep(0.05)  # e0..e9 are out, the send hangs
        for i in range(10, 60):
            s.offer(rec(i))
        assert s.stats.dropped[names.DROP_QUEUE_FULL] == 0
        assert s.spool_bytes > 0 and len(s.queue) <= s.queue_max
        s.up = False
        s.gate.set()  # the stuck send fails: e0..e9 are retried, ahead of the spool
        await asyncio.sleep(0.1)
        assert s.down
        s.up = True
        await received(s, 60)
        assert sum(s.stats.dropped.values()) == 0 and s.spool_bytes == 0

    asyncio.run(scenario())


def test_down_sink_spools_then_delivers_in_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        s = MemorySink()
        s.attach_spool(tmp_path / "spool", 1 << 20)
        s.up = False
        s.start()
        for i in range(50):
            s.offer(rec(i))
        await asyncio.sleep(0.6)
        assert s.down and s.spool_bytes > 0
        s.up = True
        for i in range(50, 60):
            s.offer(rec(i))
        await received(s, 60)
        assert not s.down and s.spool_bytes == 0

    asyncio.run(scenario())


def test_spool_survives_a_restart(tmp_path: Path) -> None:
    async def first() -> None:
        s = MemorySink()
        s.attach_spool(tmp_path / "sp", 1 << 20)
        s.up = False
        s.start()
        for i in range(30):
            s.offer(rec(i))
        await asyncio.sleep(0.1)
        await s.close(0.5)  # SIGTERM while down: everything goes to the spool

    async def second() -> list[str]:
        s = MemorySink()
        s.attach_spool(tmp_path / "sp", 1 << 20)
        s.start()
        s.offer(rec(30))
        for _ in range(100):
            if len(s.got) >= 31:
                break
            await asyncio.sleep(0.05)
        await s.close(1)
        return s.got

    asyncio.run(first())
    assert asyncio.run(second()) == [f"e{i}" for i in range(31)]


def test_spool_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "b", 64 * 1024)
    dropped = 0
    for i in range(0, 4000, 100):
        dropped += sp.append([rec(j) for j in range(i, i + 100)])
    assert sp.bytes <= 64 * 1024 and dropped > 0
    first = sp.read(1)[0]
    assert first.eid == f"e{dropped}"  # exactly the oldest ones went


def test_spool_commit_and_torn_line(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "c", 1 << 20)
    sp.append([rec(i) for i in range(10)])
    assert [r.eid for r in sp.read(4)] == ["e0", "e1", "e2", "e3"]
    sp.commit()
    seg = next((tmp_path / "c").glob("*.spool"))
    with seg.open("ab") as f:
        f.write(b'e99\t1.0\t20\t{"torn')  # killed mid-write
    sp2 = Spool(tmp_path / "c", 1 << 20)
    assert [r.eid for r in sp2.read(100)] == [f"e{i}" for i in range(4, 10)]


def test_file_sink_rotates_whole_lines_and_compresses(tmp_path: Path) -> None:
    async def scenario() -> FileSink:
        path = tmp_path / "logs" / "gw.log"
        s = FileSink("file", 20, path, max_size_mb=1024 / 1024 / 1024, max_backups=3)
        s.start()
        for i in range(400):
            s.offer(rec(i))
            if i % 50 == 0:
                await asyncio.sleep(0.02)  # several batches, so older backups get pruned
        await asyncio.sleep(0.3)
        await s.close(2)
        return s

    s = asyncio.run(scenario())
    path = s.path
    backups = sorted(path.parent.glob("gw.log.*"))
    assert len(backups) == 3 and all(b.name.endswith(".gz") for b in backups)
    lines = path.read_bytes().splitlines()
    for b in reversed(backups):
        lines = gzip.decompress(b.read_bytes()).splitlines() + lines
    for b in backups:
        assert len(gzip.decompress(b.read_bytes())) <= 1024
    ns = [orjson.loads(x)["n"] for x in lines]  # every line parses: none was split
    assert ns == list(range(ns[0], 400))  # the newest backups and the file hold a tail, in order
    assert s.stats.events == 400


def test_file_sink_age_cleanup(tmp_path: Path) -> None:
    import os

    from apigate.logs.sinks.file import compress_and_prune

    path = tmp_path / "gw.log"
    old = tmp_path / "gw.log.20200101T000000000.gz"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    new = tmp_path / "gw.log.20990101T000000000.gz"
    new.write_bytes(b"x")
    compress_and_prune(path, None, True, 10, 30)
    assert not old.exists() and new.exists()


def test_samples_name_every_metric() -> None:
    s = MemorySink()
    s.stats.dropped[names.DROP_REJECTED] = 2
    p = Pipeline(sinks=[s])
    got = {n for n, _, _ in p.samples()}
    assert got == {
        metric_names.LOG_EVENTS_TOTAL,
        metric_names.LOG_EVENTS_DROPPED_TOTAL,
        metric_names.LOG_SINK_ERRORS_TOTAL,
        metric_names.LOG_SINK_QUEUE_DEPTH,
        metric_names.LOG_SPOOL_BYTES,
    }


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_text_format(fmt: str) -> None:
    p = Pipeline(text=fmt == "text")
    r = p.process(p.event("INFO", "server", "listener_started", "Listener started", address="a:1"))
    assert r is not None
    assert (r.text is not None) == (fmt == "text")
    if r.text:
        assert b"INFO server Listener started" in r.text and b"address=a:1" in r.text


def test_unstructured_events_fold_fields_into_the_message() -> None:
    p = Pipeline(structured=False)
    r = p.process(
        p.event("INFO", "gateway", "request_completed", "Request completed", status=200, password="x")
    )
    assert r is not None
    ev = orjson.loads(r.json)
    assert set(ev) == {"timestamp", "level", "service", "component", "event_type", "message", "event_id"}
    assert ev["message"] == "Request completed status=200 password=[REDACTED]"


def test_spool_dir_that_cannot_be_created_fails_soft(tmp_path: Path) -> None:
    from apigate.config.schema import LoggingConfig

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = LoggingConfig.model_validate(
        {
            "spool_dir": str(blocker / "spool"),
            "sinks": [{"type": "elasticsearch", "elasticsearch": {"urls": ["http://127.0.0.1:9"]}}],
        }
    )
    p = Pipeline.from_config(cfg)
    assert p.sinks[0].spool is None  # memory only
    warned = [e for e in p.intake if isinstance(e, dict) and e["event_type"] == "spool_unavailable"]
    assert len(warned) == 1 and warned[0]["sink"] == "elasticsearch"


def test_sinks_of_one_type_get_distinct_names_and_spools(tmp_path: Path) -> None:
    from apigate.config.schema import LoggingConfig

    es = {"type": "elasticsearch", "elasticsearch": {"urls": ["http://127.0.0.1:9"]}}
    cfg = LoggingConfig.model_validate({"spool_dir": str(tmp_path), "sinks": [es, es, {"type": "stdout"}]})
    p = Pipeline.from_config(cfg, worker=1)
    assert [s.name for s in p.sinks] == ["elasticsearch", "elasticsearch-2", "stdout"]
    assert sorted(d.name for d in tmp_path.iterdir()) == ["elasticsearch-2.w1", "elasticsearch.w1"]
