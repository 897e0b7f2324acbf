"""The network sinks against strict wire-protocol servers on real sockets (tests/logservers/)
and CloudWatch against moto's server mode with the real AWS client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from apigate.config.schema import CloudWatchSink as CloudWatchConfig
from apigate.config.schema import ElasticsearchSink as ElasticsearchConfig
from apigate.config.schema import SplunkSink as SplunkConfig
from apigate.logs import names
from apigate.logs.record import Record
from apigate.logs.sinks.base import Sink
from apigate.logs.sinks.cloudwatch import CloudWatchSink, rejected_count, split_batches
from apigate.logs.sinks.elasticsearch import ElasticsearchSink
from apigate.logs.sinks.splunk import SplunkSink
from logservers.base import free_port
from logservers.elasticsearch import ElasticsearchServer
from logservers.splunk import SplunkServer


def rec(i: int, ts: float | None = None, **extra: object) -> Record:
    t = ts if ts is not None else time.time()
    doc = {"timestamp": "2026-11-28T00:00:00.000Z", "message": f"event {i}", "event_id": f"id-{i}", **extra}
    return Record(f"id-{i}", t, 20, orjson.dumps(doc))


async def deliver(sink: Sink, records: list[Record], until: float = 15.0) -> None:
    sink.start()
    for r in records:
        sink.offer(r)
    end = time.monotonic() + until
    while time.monotonic() < end:
        done = sink.stats.events + sum(sink.stats.dropped.values())
        if done >= len(records) and not sink.queue and not sink.retry:
            break
        await asyncio.sleep(0.05)
    await sink.close(2)


@pytest.fixture
def es() -> Iterator[ElasticsearchServer]:
    s = ElasticsearchServer(username="gateway", password="pw").start()
    yield s  # type: ignore[misc]
    s.stop()


@pytest.fixture
def hec() -> Iterator[SplunkServer]:
    s = SplunkServer("tok-123").start()
    yield s  # type: ignore[misc]
    s.stop()


def es_sink(url: str, **kw: object) -> ElasticsearchSink:
    cfg = ElasticsearchConfig(
        urls=[url], batch_size=50, flush_interval_secs=0.05, username="gateway", password="pw", **kw
    )  # type: ignore[arg-type]
    return ElasticsearchSink("elasticsearch", 20, cfg)


# ----------------------------------------------------------------------------- elasticsearch
def test_es_bulk_ids_index_and_auth(es: ElasticsearchServer) -> None:
    sink = es_sink(es.url, index="logs-%Y.%m.%d")
    ts = 1710506096.789  # 2024-03-15
    asyncio.run(deliver(sink, [rec(i, ts) for i in range(120)]))
    assert es.protocol_errors == []
    assert sorted(es.docs) == sorted(f"id-{i}" for i in range(120))
    assert set(es.index_of.values()) == {"logs-2024.03.15"}
    assert max(es.bulk_sizes) <= 50
    assert sink.stats.events == 120


def test_es_wrong_credentials_keep_events(es: ElasticsearchServer) -> None:
    cfg = ElasticsearchConfig(urls=[es.url], flush_interval_secs=0.05, username="gateway", password="nope")
    sink = ElasticsearchSink("elasticsearch", 20, cfg)
    asyncio.run(deliver(sink, [rec(1)], until=1))
    assert es.docs == {} and sink.stats.errors >= 1 and sink.stats.events == 0


def test_es_429_burst_and_item_retries_never_duplicate(es: ElasticsearchServer) -> None:
    es.burst_429 = 3
    es.item_429_every = 7
    sink = es_sink(es.url)
    asyncio.run(deliver(sink, [rec(i) for i in range(300)], until=30))
    assert sorted(es.docs) == sorted(f"id-{i}" for i in range(300))
    assert es.statuses[429] > 0 and es.overwrites == 0
    assert sink.stats.events == 300 and sink.stats.errors > 0


def test_es_mapping_errors_are_counted_and_dropped(es: ElasticsearchServer) -> None:
    sink = es_sink(es.url)
    records = [rec(i, bad_field=1) if i % 10 == 0 else rec(i) for i in range(50)]
    asyncio.run(deliver(sink, records))
    assert len(es.docs) == 45
    assert sink.stats.dropped[names.DROP_REJECTED] == 5 and sink.stats.events == 45


def test_es_second_url_when_first_is_down(es: ElasticsearchServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = ElasticsearchConfig(
        urls=[dead, es.url], flush_interval_secs=0.05, username="gateway", password="pw"
    )
    sink = ElasticsearchSink("elasticsearch", 20, cfg)
    asyncio.run(deliver(sink, [rec(i) for i in range(10)]))
    assert len(es.docs) == 10


def test_es_resend_after_restart_is_a_conflict_not_a_duplicate(es: ElasticsearchServer) -> None:
    asyncio.run(deliver(es_sink(es.url), [rec(i) for i in range(20)]))
    sink = es_sink(es.url)
    asyncio.run(deliver(sink, [rec(i) for i in range(10, 30)]))  # 10..19 again, as a replay would
    assert len(es.docs) == 30 and es.conflicts == 10 and sink.stats.events == 20


# ----------------------------------------------------------------------------- splunk
def hec_sink(url: str, token: str = "tok-123", **kw: object) -> SplunkSink:
    cfg = SplunkConfig(
        endpoint=url + "/services/collector",
        token=token,
        index="main",
        batch_size=40,
        flush_interval_secs=0.05,
        **kw,
    )  # type: ignore[arg-type]
    return SplunkSink("splunk", 20, cfg)


def test_hec_batches_and_event_shape(hec: SplunkServer) -> None:
    sink = hec_sink(hec.url)
    asyncio.run(deliver(sink, [rec(i, 1700000000.5) for i in range(100)]))
    assert hec.protocol_errors == []
    assert len(hec.events) == 100 and hec.requests >= 3
    e = hec.events[0]
    assert e["time"] == 1700000000.5 and e["sourcetype"] == "api_gateway" and e["index"] == "main"
    assert e["source"] == "apigate" and e["event"]["event_id"] == "id-0"


def test_hec_busy_is_retried(hec: SplunkServer) -> None:
    hec.busy = 2
    sink = hec_sink(hec.url)
    asyncio.run(deliver(sink, [rec(i) for i in range(10)], until=20))
    assert len(hec.events) == 10 and sink.stats.errors == 2


def test_hec_bad_token_is_not_retried(hec: SplunkServer) -> None:
    sink = hec_sink(hec.url, token="wrong")
    asyncio.run(deliver(sink, [rec(i) for i in range(10)]))
    assert hec.events == [] and sink.stats.dropped[names.DROP_REJECTED] == 10
    assert hec.requests == 1


def test_hec_incorrect_index_is_not_retried(hec: SplunkServer) -> None:
    cfg = SplunkConfig(
        endpoint=hec.url + "/services/collector", token="tok-123", index="nope", flush_interval_secs=0.05
    )
    sink = SplunkSink("splunk", 20, cfg)
    asyncio.run(deliver(sink, [rec(1)]))
    assert sink.stats.dropped[names.DROP_REJECTED] == 1 and hec.requests == 1


def test_hec_indexer_acknowledgement() -> None:
    s = SplunkServer("tok-123", ack_enabled=True).start()
    try:
        s.ack_delay = 2
        sink = hec_sink(s.url, ack=True)
        asyncio.run(deliver(sink, [rec(i) for i in range(50)]))
        assert len(s.events) == 50 and sink.stats.events == 50
    finally:
        s.stop()


# ----------------------------------------------------------------------------- cloudwatch
def test_cloudwatch_batch_limits() -> None:
    now = time.time()
    many = [Record(f"i{i}", now + i / 1000, 20, b"x") for i in range(25_000)]
    assert [len(b) for b in split_batches(many)] == [10_000, 10_000, 5_000]
    big = [Record(f"b{i}", now, 20, b"y" * 100_000) for i in range(30)]
    batches = split_batches(big)
    assert all(sum(len(m.encode()) + 26 for _, m in b) <= 1_048_576 for b in batches) and len(batches) == 3
    span = [Record("late", now, 20, b"a"), Record("early", now - 25 * 3600, 20, b"b")]
    out = split_batches(span)
    assert len(out) == 2 and out[0][0][1] == "b"  # chronological, split at the 24 h span
    assert rejected_count({"tooOldLogEventEndIndex": 1, "tooNewLogEventStartIndex": 8}, 10) == 4


@pytest.fixture
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cw_messages(url: str, group: str, stream: str) -> list[dict[str, object]]:
    import boto3

    client = boto3.client("logs", region_name="us-east-1", endpoint_url=url)
    out: list[dict[str, object]] = []
    kw: dict[str, object] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
    while True:
        resp = client.get_log_events(**kw)
        out += [orjson.loads(e["message"]) for e in resp["events"]]
        if not resp["events"]:
            return out
        kw["nextToken"] = resp["nextForwardToken"]


def test_cloudwatch_creates_group_and_stream_and_puts(moto_url: str) -> None:
    import boto3

    client = boto3.client("logs", region_name="us-east-1", endpoint_url=moto_url)
    client.create_log_group(logGroupName="/aws/api-gateway/test")  # exists already: still fine
    cfg = CloudWatchConfig(
        region="us-east-1",
        log_group="/aws/api-gateway/test",
        log_stream="gw-{hostname}-{pid}",
        batch_size=100,
        flush_interval_secs=0.05,
        endpoint_url=moto_url,
    )
    sink = CloudWatchSink("cloudwatch", 20, cfg)
    asyncio.run(deliver(sink, [rec(i) for i in range(250)], until=30))
    assert sink.stats.events == 250, sink.stats
    assert "{" not in sink.stream and str(os.getpid()) in sink.stream
    got = cw_messages(moto_url, "/aws/api-gateway/test", sink.stream)
    assert sorted(str(e["event_id"]) for e in got) == sorted(f"id-{i}" for i in range(250))


def test_cloudwatch_rejected_events_are_counted(moto_url: str) -> None:
    cfg = CloudWatchConfig(
        region="us-east-1",
        log_group="/aws/api-gateway/rejects",
        log_stream="gw",
        flush_interval_secs=0.05,
        endpoint_url=moto_url,
    )
    sink = CloudWatchSink("cloudwatch", 20, cfg)
    now = time.time()
    records = [rec(i, now - 20 * 86400) for i in range(3)] + [rec(i, now) for i in range(3, 10)]
    asyncio.run(deliver(sink, records, until=30))
    got = cw_messages(moto_url, "/aws/api-gateway/rejects", "gw")
    assert sorted(str(e["event_id"]) for e in got) == sorted(f"id-{i}" for i in range(3, 10))
    assert sink.stats.dropped[names.DROP_REJECTED] == 3 and sink.stats.events == 7


class HeldRelay:
    """A loopback TCP relay to moto that holds every connection until `release` is set:
    an endpoint that answers late (a loaded or half-reachable CloudWatch), so the sink
    sits in its first `open()` for as long as the test wants."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.release = threading.Event()
        self.accepted = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _serve(self, conn: socket.socket) -> None:
        self.release.wait()
        conn.settimeout(None)
        with conn, socket.create_connection(("127.0.0.1", self.target_port)) as up:
            back = threading.Thread(target=self._pipe, args=(up, conn), daemon=True)
            back.start()
            self._pipe(conn, up)
            back.join(30)

    def close(self) -> None:
        self._closed = True
        self.release.set()
        self._sock.close()


def test_cloudwatch_full_queue_goes_to_the_spool_while_open_hangs(moto_url: str, tmp_path: Path) -> None:
    """Regression (outage test, whole batches lost after a restart): the sink's first
    `open()` (botocore client, CreateLogGroup) took seconds while the gateway produced
    faster than that, the 20,000-event queue overflowed and dropped the oldest although a
    spool was there. Full, the queue now moves to the spool; nothing is lost or doubled."""
    group, n = "/aws/api-gateway/held", 3000
    relay = HeldRelay(int(moto_url.rsplit(":", 1)[1]))
    cfg = CloudWatchConfig(
        region="us-east-1",
        log_group=group,
        log_stream="gw",
        batch_size=100,
        flush_interval_secs=0.05,
        endpoint_url=relay.url,
    )
    sink = CloudWatchSink("cloudwatch", 20, cfg)
    sink.queue_max = 500
    sink.attach_spool(tmp_path / "spool", 1 << 24)
    now = time.time()

    async def scenario() -> None:
        sink.start()
        try:
            for _ in range(200):  # until the first open() is waiting on the relay
                if relay.accepted:
                    break
                await asyncio.sleep(0.05)
            assert relay.accepted, "the sink never reached the endpoint"
            for i in range(n):
                sink.offer(rec(i, now + i / 1000))
                if i % 100 == 99:
                    await asyncio.sleep(0.001)  # the pump's rhythm: the loop turns meanwhile
            assert sink.stats.dropped[names.DROP_QUEUE_FULL] == 0, sink.stats
            assert sink.spool_bytes > 0 and sink.stats.events == 0
        finally:
            relay.release.set()  # also on failure: the held request would hold the loop's exit
        end = time.monotonic() + 30
        while sink.stats.events < n and time.monotonic() < end:
            await asyncio.sleep(0.05)
        await sink.close(2)

    try:
        asyncio.run(scenario())
    finally:
        relay.close()
    assert sink.stats.events == n and sum(sink.stats.dropped.values()) == 0, sink.stats
    got = [str(e["event_id"]) for e in cw_messages(moto_url, group, "gw")]
    assert got == [f"id-{i}" for i in range(n)]  # all, once each, in order
    assert sink.spool_bytes == 0


def test_es_api_key_auth() -> None:
    s = ElasticsearchServer(api_key="k-123").start()
    try:
        cfg = ElasticsearchConfig(urls=[s.url], flush_interval_secs=0.05, api_key="k-123")
        sink = ElasticsearchSink("elasticsearch", 20, cfg)
        asyncio.run(deliver(sink, [rec(i) for i in range(5)]))
        assert len(s.docs) == 5
    finally:
        s.stop()
